import numpy as np
import pytest
from PIL import Image

from skanomaly import ImageEmbedder, make_patchcore
from skanomaly.datasets import make_synthetic
from skanomaly.evaluation import FeatureCache, evaluate_pipeline


def test_feature_cache_embeds_each_path_once(tmp_path, monkeypatch):
    paths = []
    for i, image in enumerate(make_synthetic(3, 0, image_size=32, random_state=0).images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    embedder = ImageEmbedder(image_size=32).fit(None)
    calls = []
    original = type(embedder).transform
    monkeypatch.setattr(type(embedder), "transform",
                        lambda self, X: calls.append(len(X)) or original(self, X))
    cache = FeatureCache()
    first = cache.transform(embedder, paths[:2])
    both = cache.transform(embedder, paths[::-1])
    assert calls == [2, 1]
    np.testing.assert_array_equal(both[1:], first[::-1])
    np.testing.assert_allclose(both, original(embedder, paths[::-1]), rtol=1e-3, atol=1e-4)


def test_evaluate_pipeline_reports_scores_and_maps():
    data = make_synthetic(24, 8, image_size=48, random_state=0)
    result = evaluate_pipeline(
        make_patchcore(image_size=48, random_state=0), data.images[:18], data.images[18:],
        data.target[18:], list(data.masks[18:]),
    )
    assert result["image_auroc"] >= 0.9 and result["pixel_auroc"] >= 0.85
    assert result["fit_s"] > 0 and result["ms_per_image"] > 0
    with pytest.raises(ValueError):
        evaluate_pipeline(make_patchcore(image_size=48), data.images[:18], [], [])
