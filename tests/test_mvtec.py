"""Accuracy on real MVTec images (skipped when ../shared/data is absent)."""

import pytest
from sklearn.metrics import roc_auc_score

from conftest import mvtec_category
from skanomaly import anomaly_maps, make_patchcore
from skanomaly.datasets import load_mvtec
from skanomaly.metrics import pixel_roc_auc


@pytest.mark.slow
def test_patchcore_defaults_on_bottle():
    root = mvtec_category("mvtec_bottle")
    train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
    pipe = make_patchcore(random_state=0).fit(train.images)
    image_auroc = roc_auc_score(test.target, pipe.decision_function(test.images))
    pixel_auroc = pixel_roc_auc(test.masks, anomaly_maps(pipe, test.images))
    print(f"bottle: image AUROC {image_auroc:.4f}, pixel AUROC {pixel_auroc:.4f}")
    assert image_auroc >= 0.99
    assert pixel_auroc >= 0.96
