import inspect

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV

from skanomaly import (
    GaussianDetector,
    KDEDetector,
    KNNDetector,
    anomaly_maps,
    make_anomalydino,
    make_cflow,
    make_dfkde,
    make_dfm,
    make_fastflow,
    make_padim,
    make_reverse_distillation,
    make_softpatch,
    make_spade,
    make_stfpm,
)
from skanomaly.datasets import make_synthetic
from skanomaly.model_selection import NormalOnlyKFold
from skanomaly.registry import available_methods

SIZE = 64
PATCH_FACTORIES = [make_padim, make_spade, make_softpatch, make_dfm, make_anomalydino]
IMAGE_FACTORIES = [make_dfkde]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(36, 12, image_size=SIZE, random_state=0)


@pytest.mark.parametrize("factory", PATCH_FACTORIES + IMAGE_FACTORIES, ids=lambda f: f.__name__)
def test_factory_separates_synthetic_defects(factory, data):
    pipe = factory(image_size=SIZE, random_state=0).fit(data.images[:30])
    test, y = data.images[30:], data.target[30:]
    scores = pipe.score_samples(test)
    assert scores.dtype == np.float64 and scores.shape == (18,)
    assert roc_auc_score(y, pipe.decision_function(test)) >= 0.9
    assert set(pipe.predict(test).tolist()) <= {-1, 1}


@pytest.mark.parametrize("factory", PATCH_FACTORIES, ids=lambda f: f.__name__)
def test_patch_factories_draw_maps(factory, data):
    pipe = factory(image_size=SIZE, random_state=0).fit(data.images[:30])
    maps = anomaly_maps(pipe, data.images[30:])
    assert maps.shape == (18, SIZE, SIZE)
    assert roc_auc_score(data.masks[30:].ravel(), maps.ravel()) >= 0.85


@pytest.mark.parametrize("factory", IMAGE_FACTORIES, ids=lambda f: f.__name__)
def test_image_factories_have_no_maps(factory, data):
    pipe = factory(image_size=SIZE, random_state=0).fit(data.images[:30])
    with pytest.raises(ValueError):
        anomaly_maps(pipe, data.images[30:32])


def _plain_params(estimator):
    return {key: repr(value) for key, value in estimator.get_params(deep=True).items()
            if not hasattr(value, "get_params") and key != "steps"}


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_factory_defaults_do_not_depend_on_the_data(name):
    """Defaults are rules, not constants read off a dataset or a backbone.

    Fitting on two unlike datasets (colour texture; grey noise of another
    size and scale) leaves every parameter as the factory set it, and the
    head's parameters are the same whatever the backbone.
    """
    factory = available_methods()[name].factory
    quick = {"max_epochs": 1} if "max_epochs" in inspect.signature(factory).parameters else {}
    colour = make_synthetic(8, 0, image_size=32, random_state=0).images
    grey = np.random.default_rng(1).integers(0, 40, (8, 40, 56), dtype=np.uint8)
    expected = _plain_params(factory(image_size=32, random_state=0, **quick))
    for images in (colour, grey):
        fitted = factory(image_size=32, random_state=0, **quick).fit(images)
        assert _plain_params(fitted) == expected
    heads = [_plain_params(factory(backbone, **quick)[-1])
             for backbone in ("efficientnet_lite0", "efficientnet_lite2", "resnet18")]
    for head in heads:
        head.pop("backbone", None)  # a distillation head's teacher is the backbone
    assert heads[0] == heads[1] == heads[2]


def test_factory_heads_and_defaults():
    padim = make_padim()
    assert isinstance(padim[-1], GaussianDetector)
    assert padim[0].n_features == 100 and padim[0].reduction == "random"
    assert len(padim[0].layers) == 3 and padim[-1].regularization_scale != "absolute"
    spade = make_spade()
    assert isinstance(spade[-1], KNNDetector) and spade[-1].mode == "spade"
    assert make_softpatch()[-1].train_patch_outlier_quantile > 0
    dfm = make_dfm()
    assert dfm[-1].n_components == 0.97 and dfm[-1].score_type in ("nll", "reconstruction")
    assert isinstance(make_dfkde()[-1], KDEDetector) and make_dfkde()[-1].n_components == 16
    # Reverse Distillation scores over a blurred map, STFPM over raw patches.
    assert make_stfpm()[-1].image_score_sigma == 0 < make_reverse_distillation()[-1].image_score_sigma
    # CFlow scores over a blurred NLL map, FastFlow over raw patches.
    assert make_fastflow()[-1].image_score_sigma == 0 < make_cflow()[-1].image_score_sigma
    dino = make_anomalydino()[-1]
    assert dino.metric == "cosine" and dino.top_fraction == 0.01 and dino.mode == "patchcore"


@pytest.mark.parametrize(
    "factory, grid",
    [
        (make_padim, {"gaussiandetector__regularization": [0.01, 1.0]}),
        (make_spade, {"knndetector__n_neighbors": [3, 10]}),
        (make_softpatch, {"knndetector__train_patch_outlier_quantile": [0.0, 0.1]}),
        (make_dfm, {"gaussiandetector__score_type": ["nll", "reconstruction"]}),
        (make_dfkde, {"kdedetector__n_components": [4, 8]}),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_grid_search_runs(factory, grid, data):
    search = GridSearchCV(
        factory(image_size=32, random_state=0), grid, scoring="roc_auc",
        cv=NormalOnlyKFold(n_splits=2),
    ).fit(list(data.images[:36:2]) + list(data.images[36:]), np.r_[np.ones(18, int), -np.ones(12, int)])
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert next(iter(search.best_params_.values())) in next(iter(grid.values()))


def test_registry_is_the_one_list_of_methods():
    import skanomaly
    from skanomaly import pipelines

    methods = available_methods()
    factories = [info.factory.__name__ for info in methods.values()]
    # Every public factory of the package is registered, and only those.
    public = sorted(n for n in dir(skanomaly) if n.startswith("make_"))
    assert sorted(factories) == public == sorted(pipelines.__all__)
    assert set(factories) <= set(skanomaly.__all__)
    for name, info in methods.items():
        assert info.factory is getattr(skanomaly, info.factory.__name__)
        assert info.family in {"memory bank", "Gaussian", "kernel density", "normalizing flow",
                               "discriminator", "distillation", "reconstruction"}, name
    trained = available_methods(trained=True)
    assert set(trained) | set(available_methods(trained=False)) == set(methods)
    assert "stfpm" in trained and "patchcore" not in trained


def test_get_method_names_the_choices():
    from skanomaly.registry import get_method

    assert get_method("dfm").factory is make_dfm
    with pytest.raises(ValueError, match="Unknown method 'patchkore'; choose from patchcore, "):
        get_method("patchkore")


def test_a_registered_method_reaches_the_cli_and_the_docs(monkeypatch):
    from skanomaly import registry
    from skanomaly.cli import build_parser

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry._register("toymethod", family="memory bank", maps=True, trained=False,
                        reference="nobody", pipeline="`PatchEmbedder` + toy", good_for="tests")
    def make_toymethod(**kwargs):
        return make_spade(**kwargs)

    assert "toymethod" in available_methods()
    assert registry.get_method("toymethod").factory is make_toymethod
    commands = build_parser()._subparsers._group_actions[0].choices
    for command in ("fit", "evaluate"):
        assert "toymethod" in commands[command].format_help(), command
    assert "make_toymethod()" in registry._markdown_table()
    with pytest.raises(ValueError, match="registered twice"):
        registry._register("toymethod", family="memory bank", maps=True, trained=False,
                           reference="", pipeline="", good_for="")(make_toymethod)


def test_anomalydino_round_trips_through_joblib(data, tmp_path):
    import joblib

    from skanomaly.augment import dihedral_copies

    pipe = make_anomalydino(image_size=SIZE, random_state=0).fit(
        dihedral_copies(data.images[:4], n_copies=4))
    assert len(pipe[-1].memory_bank_) == 16 * (SIZE // 8) ** 2  # every patch of every view
    joblib.dump(pipe, tmp_path / "dino.joblib")
    loaded = joblib.load(tmp_path / "dino.joblib")
    np.testing.assert_array_equal(loaded.score_samples(data.images[30:]),
                                  pipe.score_samples(data.images[30:]))


def test_api_reference_documents_every_public_class():
    from pathlib import Path

    import skanomaly

    api = (Path(__file__).resolve().parents[1] / "doc" / "api.rst").read_text()
    classes = [name for name in skanomaly.__all__ if name[0].isupper()]
    # Listed in an autosummary (a page each) under ``currentmodule:: skanomaly``.
    missing = [name for name in classes if f"\n   {name}\n" not in api]
    assert not missing, f"doc/api.rst lacks {missing}"
