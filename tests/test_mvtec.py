"""Accuracy on real MVTec images (skipped when ../shared/data is absent).

Thresholds are the issues' acceptance bars. Methods sharing an embedder
configuration share its features through one FeatureCache.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from conftest import mvtec_category
from skanomaly import (
    anomaly_maps,
    make_dfkde,
    make_dfm,
    make_padim,
    make_patchcore,
    make_softpatch,
    make_spade,
)
from skanomaly.datasets import load_mvtec
from skanomaly.evaluation import FeatureCache, evaluate_pipeline
from skanomaly.metrics import pixel_roc_auc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bottle():
    root = mvtec_category("mvtec_bottle")
    return root, load_mvtec(root, "train"), load_mvtec(root, "test")


@pytest.fixture(scope="module")
def cache():
    return FeatureCache()


def test_patchcore_defaults_on_bottle(bottle):
    _, train, test = bottle
    pipe = make_patchcore(random_state=0).fit(train.images)
    image_auroc = roc_auc_score(test.target, pipe.decision_function(test.images))
    pixel_auroc = pixel_roc_auc(test.masks, anomaly_maps(pipe, test.images))
    print(f"bottle patchcore: image AUROC {image_auroc:.4f}, pixel AUROC {pixel_auroc:.4f}")
    assert image_auroc >= 0.99
    assert pixel_auroc >= 0.96


@pytest.mark.parametrize(
    "factory, min_image, min_pixel",
    [
        (make_padim, 0.98, 0.95),
        (make_spade, 0.95, 0.95),
        (make_softpatch, 0.99, 0.95),
        (make_dfm, 0.95, None),
        (make_dfkde, 0.90, None),
    ],
    ids=lambda x: getattr(x, "__name__", None),
)
def test_method_defaults_on_bottle(bottle, cache, factory, min_image, min_pixel):
    _, train, test = bottle
    result = evaluate_pipeline(
        factory(random_state=0), train.images, test.images, test.target, test.masks, cache=cache
    )
    print(f"bottle {factory.__name__}: {result['image_auroc']:.4f} / {result['pixel_auroc']:.4f}")
    assert result["image_auroc"] >= min_image
    if min_pixel is not None:
        assert result["pixel_auroc"] >= min_pixel


def test_softpatch_keeps_slipped_in_defects_out_of_the_bank(bottle, cache):
    _, train, test = bottle
    rng = np.random.default_rng(0)
    defective = np.flatnonzero(test.target == -1)
    slipped = sorted(rng.choice(defective, round(0.1 * len(defective)), replace=False))
    rest = [i for i in range(len(test.images)) if i not in slipped]
    train_images = train.images + [test.images[i] for i in slipped]
    results = {}
    for factory in (make_patchcore, make_softpatch):
        results[factory.__name__] = evaluate_pipeline(
            factory(random_state=0), train_images, [test.images[i] for i in rest],
            test.target[rest], [test.masks[i] for i in rest], cache=cache,
        )
    plain, soft = results["make_patchcore"], results["make_softpatch"]
    print(f"contaminated bottle: patchcore {plain['image_auroc']:.4f} / {plain['pixel_auroc']:.4f}, "
          f"softpatch {soft['image_auroc']:.4f} / {soft['pixel_auroc']:.4f}")
    assert soft["image_auroc"] >= plain["image_auroc"] and soft["image_auroc"] >= 0.99
    # Which bank holds the defect patches of the slipped-in images?
    embedder = plain["pipeline"][0]
    feats = cache.transform(embedder, [test.images[i] for i in slipped])
    masks = np.stack([np.asarray(Image.open(test.masks[i]).resize((256, 256))) > 127
                      for i in slipped])
    cell = 256 // feats.shape[1]
    defect = masks.reshape(len(slipped), feats.shape[1], cell, feats.shape[2], cell).mean((2, 4)) > 0.25
    defect_feats = feats[defect]

    def n_in_bank(pipe):
        bank = pipe[-1].memory_bank_
        return sum(bool((np.abs(bank - f).max(1) == 0).any()) for f in defect_feats)

    in_plain, in_soft = n_in_bank(plain["pipeline"]), n_in_bank(soft["pipeline"])
    print(f"defect patches in the bank: patchcore {in_plain}, softpatch {in_soft} of {len(defect_feats)}")
    assert in_plain >= 10 and in_soft <= 0.1 * in_plain


def test_padim_fits_bottle_within_2gb():
    root = mvtec_category("mvtec_bottle")
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a
    # child of this (large) test process would report the parent's peak.
    code = textwrap.dedent(f"""
        from skanomaly import make_padim
        from skanomaly.datasets import load_mvtec
        pipe = make_padim(random_state=0).fit(load_mvtec({str(root)!r}, "train").images)
        assert pipe[-1].precision_.shape == (64, 64, 100, 100)
        status = open("/proc/self/status").read()
        kb = int(status.split("VmHWM:")[1].split()[0])
        print(kb / 2**20)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak_gb = float(out.stdout.split()[-1])
    print(f"PaDiM fit on bottle: peak RSS {peak_gb:.2f} GB")
    assert peak_gb < 2.0


@pytest.mark.parametrize("category", ["mvtec_bottle", "mvtec3d_tire"])
def test_calibrated_false_alarm_rate_on_held_out_normals(category, cache):
    from scipy.stats import betabinom

    root = mvtec_category(category)
    train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
    normals = [p for p, t in zip(test.images, test.target) if t == 1]
    if (root / "validation").is_dir():
        normals += load_mvtec(root, "validation").images
    alpha = 0.1
    pipe = make_patchcore(contamination=alpha, random_state=0)
    pipe[:-1].fit(None)
    pipe[-1].fit(cache.transform(pipe[:-1], train.images))
    flagged = int((pipe[-1].predict(cache.transform(pipe[:-1], normals)) == -1).sum())
    n_cal = len(pipe[-1].calibration_scores_)
    k = int(np.floor(alpha * (n_cal + 1)))
    # Flags among m new normals follow a beta-binomial law: the threshold is
    # the k-th lowest of n_cal calibration scores (exchangeability).
    law = betabinom(len(normals), k, n_cal + 1 - k)
    print(f"{category}: {flagged}/{len(normals)} normals flagged at alpha={alpha} "
          f"(expected {law.mean():.1f}, 99% bound {law.ppf(0.99):.0f})")
    assert flagged <= law.ppf(0.99)
