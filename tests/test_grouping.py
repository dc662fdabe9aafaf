"""GroupedDetector: one model per product, routed by name or by the nearest product."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import mvtec_category
from skanomaly import GroupedDetector, make_padim, make_patchcore
from skanomaly.datasets import load_mvtec

SIZE = 64


pytestmark = pytest.mark.usefixtures("few_calibration_images")


@pytest.fixture(scope="module")
def two_products():
    rng = np.random.default_rng(0)
    dark = (rng.random((10, SIZE, SIZE, 3)) * 0.3).astype(np.float32)
    light = (0.7 + rng.random((10, SIZE, SIZE, 3)) * 0.3).astype(np.float32)
    images = np.concatenate([dark[:8], light[:8]])
    groups = np.array(["dark"] * 8 + ["light"] * 8)
    model = GroupedDetector(make_padim(image_size=SIZE, random_state=0)).fit(images, groups=groups)
    return model, dark[8:], light[8:]


def test_each_product_is_its_own_model(two_products):
    model, dark, light = two_products
    assert model.groups_.tolist() == ["dark", "light"] and model.n_images_.tolist() == [8, 8]
    test = np.concatenate([dark, light])
    given = model.decision_function(test, groups=["dark"] * 2 + ["light"] * 2)
    np.testing.assert_allclose(given[:2], model.estimators_[0].decision_function(dark))
    np.testing.assert_allclose(given[2:], model.estimators_[1].decision_function(light))
    # Without groups each image goes to the nearest product: the same answers.
    assert model.route(test).tolist() == ["dark", "dark", "light", "light"]
    np.testing.assert_allclose(model.decision_function(test), given)
    np.testing.assert_array_equal(model.predict(test), np.where(given >= 0, 1, -1))


def test_bad_groups_are_named(two_products):
    model, dark, _ = two_products
    with pytest.raises(ValueError, match="Unknown product 'shiny'"):
        model.predict(dark, groups=["dark", "shiny"])
    with pytest.raises(ValueError, match="one product per image"):
        model.score_samples(dark, groups=["dark"])
    with pytest.raises(ValueError, match="needs groups="):
        GroupedDetector(make_padim(image_size=SIZE)).fit(dark, groups=None)


def test_a_failed_fit_names_the_product_and_keeps_the_old_model(two_products):
    model, dark, light = two_products
    fitted = model.estimators_
    with pytest.raises(ValueError, match="Product 'lonely' \\(1 images\\)"):
        model.fit(np.concatenate([dark, light[:1]]), groups=["dark", "dark", "lonely"])
    assert model.estimators_ is fitted and model.groups_.tolist() == ["dark", "light"]


def test_three_real_products_score_as_their_own_models():
    sets = ["mvtec_bottle", "mvtec3d_tire", "mvtec_screw"]
    roots = [mvtec_category(name) for name in sets]
    factory = lambda: make_patchcore(image_size=96, random_state=0)  # noqa: E731
    train, groups, tests = [], [], []
    for name, root in zip(sets, roots):
        images = load_mvtec(root, "train").images[:12]
        train += images
        groups += [name] * len(images)
        test = load_mvtec(root, "test")
        rng = np.random.default_rng(0)
        pick = np.concatenate([rng.choice(np.flatnonzero(test.target == t), 6, replace=False)
                               for t in (1, -1)])
        tests.append(([test.images[i] for i in pick], test.target[pick]))
    model = GroupedDetector(factory()).fit(train, groups=groups)
    for k, (name, (images, target)) in enumerate(zip(sets, tests)):
        single = factory().fit(train[12 * k:12 * (k + 1)])
        routed = model.route(images)
        assert np.mean(routed == name) >= 0.95, (name, routed)
        auc_grouped = roc_auc_score(target == -1, -model.decision_function(images))
        auc_single = roc_auc_score(target == -1, -single.decision_function(images))
        assert abs(auc_grouped - auc_single) <= 0.005, (name, auc_grouped, auc_single)


def test_maps_and_masks_come_from_each_images_product(two_products):
    from skanomaly import anomaly_maps, anomaly_masks

    model, dark, light = two_products
    test = np.concatenate([light[:1], dark, light[1:]])
    maps = model.anomaly_maps(test)
    masks = model.anomaly_masks(test, groups=["light", "dark", "dark", "light"])
    assert len(maps) == len(masks) == 4 and maps[0].shape == (SIZE, SIZE)
    np.testing.assert_allclose(maps[1], anomaly_maps(model.estimators_[0], dark[:1])[0], rtol=1e-5)
    np.testing.assert_allclose(maps[3], anomaly_maps(model.estimators_[1], light[1:])[0], rtol=1e-5)
    np.testing.assert_array_equal(masks[0], anomaly_masks(model.estimators_[1], light[:1])[0])
