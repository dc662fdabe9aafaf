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
    make_anomalydino,
    make_cflow,
    make_dfkde,
    make_dfm,
    make_fastflow,
    make_patchcore,
    make_reverse_distillation,
    make_simplenet,
    make_softpatch,
    make_spade,
    make_stfpm,
)
from skanomaly.augment import dihedral_copies
from skanomaly.datasets import load_mvtec
from skanomaly.evaluation import FeatureCache, evaluate_pipeline
from skanomaly.metrics import pixel_roc_auc
from skanomaly.neighbors import kneighbors

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bottle():
    root = mvtec_category("mvtec_bottle")
    return root, load_mvtec(root, "train"), load_mvtec(root, "test")


@pytest.fixture(scope="module")
def cache():
    return FeatureCache()



def test_anomalydino_from_four_bottle_images(bottle, cache):
    """Issue 16's few-shot bar: >= 0.95 image AUROC from 4 normal images
    (their four right-angle rotations), pixel AUROC >= 0.95. (The full
    training set gives 1.000 / 0.982: benchmarks/bench_few_shot.py.)"""
    _, train, test = bottle
    few = dihedral_copies(train.images[:4], n_copies=4)
    result = evaluate_pipeline(make_anomalydino(random_state=0), few, test.images,
                               test.target, test.masks, cache=cache)
    assert result["image_auroc"] >= 0.95
    assert result["pixel_auroc"] >= 0.95
    assert len(result["pipeline"][-1].memory_bank_) == 16 * 32 * 32

def test_patchcore_defaults_on_bottle(bottle, cache):
    _, train, test = bottle
    pipe = make_patchcore(random_state=0)
    # The training features come from the cache shared with the other tests
    # (the same as pipe.fit(...)); scoring and maps then go through the
    # fitted Pipeline from image paths, as a user's script does. Every other
    # training image: the coreset costs patches x centres, so half the images
    # take a quarter of the time, and the bars hold (full set: doc/benchmarks.md).
    pipe[:-1].fit(None)
    pipe[-1].fit(cache.transform(pipe[:-1], train.images[::2]))
    # Scores and maps from one pass over the paths (the quick start's first calls).
    maps, scores = anomaly_maps(pipe, test.images, return_scores=True)
    image_auroc = roc_auc_score(test.target, scores)
    pixel_auroc = pixel_roc_auc(test.masks, maps)
    print(f"bottle patchcore: image AUROC {image_auroc:.4f}, pixel AUROC {pixel_auroc:.4f}")
    assert image_auroc >= 0.99
    assert pixel_auroc >= 0.96


@pytest.mark.parametrize(
    "factory, image_size, min_image, min_pixel",
    [
        (make_spade, 128, 0.95, 0.95),  # 0.987 / 0.969 at 128 px, a sixth of 256 px's time
        # make_softpatch: fitted and bounded (image and pixel) in the
        # contamination test below, on bottle's training images plus a few defects.
        # The image-level bars hold at 128 px (DFM 0.998, DFKDE 0.961), where
        # a full backbone pass costs a quarter.
        (make_dfm, 128, 0.95, None),
        (make_dfkde, 128, 0.90, None),
    ],
    ids=lambda x: getattr(x, "__name__", None),
)
def test_method_defaults_on_bottle(bottle, cache, factory, image_size, min_image, min_pixel):
    _, train, test = bottle
    # Masks only where a pixel bar is checked: pixel AUROC and AUPRO over
    # bottle's 67 million test pixels cost ~10 s on one thread.
    masks = test.masks if min_pixel is not None else None
    result = evaluate_pipeline(
        factory(image_size=image_size, random_state=0), train.images, test.images, test.target,
        masks, cache=cache,
    )
    print(f"bottle {factory.__name__}: {result['image_auroc']:.4f} / {result['pixel_auroc']:.4f}")
    assert result["image_auroc"] >= min_image
    if min_pixel is not None:
        assert result["pixel_auroc"] >= min_pixel


# Trainable heads with fewer epochs than their defaults (which train to
# convergence with early stopping), on every other training image and, where
# the bar holds there, at 128 px (a quarter of the pixels to train on), to
# keep the suite short; each still has to clear the bar. SimpleNet
# needs 256 px (at 128 px: 0.73 image AUROC). Full-default figures: doc/benchmarks.md
# and benchmarks.
@pytest.mark.parametrize(
    "factory, max_epochs, image_size, min_image",
    [
        (make_fastflow, 3, 128, 0.95),
        (make_cflow, 4, 128, 0.95),
        (make_simplenet, 4, 256, 0.95),
        (make_stfpm, 3, 128, 0.90),
        (make_reverse_distillation, 6, 128, 0.95),
    ],
    ids=lambda x: getattr(x, "__name__", None),
)
def test_trainable_heads_on_bottle(bottle, cache, factory, max_epochs, image_size, min_image):
    _, train, test = bottle
    pipe = factory(max_epochs=max_epochs, image_size=image_size, random_state=0)
    # The bar is image-level: no masks, so no pixel metrics (~10 s each).
    result = evaluate_pipeline(pipe, train.images[::2], test.images, test.target, cache=cache)
    print(f"bottle {factory.__name__} ({max_epochs} epochs, {image_size} px): "
          f"{result['image_auroc']:.4f}, fit {result['fit_s']:.0f} s")
    assert result["image_auroc"] >= min_image
    assert result["pipeline"][-1].n_iter_ == max_epochs


def test_softpatch_keeps_slipped_in_defects_out_of_the_bank(bottle, cache):
    _, train, test = bottle
    rng = np.random.default_rng(0)
    defective = np.flatnonzero(test.target == -1)
    slipped = sorted(rng.choice(defective, round(0.1 * len(defective)), replace=False))
    rest = [i for i in range(len(test.images)) if i not in slipped]
    # All training images: with half of them, the six slipped-in images are
    # twice as common and SoftPatch keeps 14% of their defect patches, not 2%.
    train_images = train.images + [test.images[i] for i in slipped]
    results = {}
    # Pixel metrics (~10 s on one thread) only for SoftPatch, whose bar they are.
    for factory, masks in ((make_patchcore, None), (make_softpatch, [test.masks[i] for i in rest])):
        results[factory.__name__] = evaluate_pipeline(
            factory(random_state=0), train_images, [test.images[i] for i in rest],
            test.target[rest], masks, cache=cache,
        )
    plain, soft = results["make_patchcore"], results["make_softpatch"]
    print(f"contaminated bottle image AUROC: patchcore {plain['image_auroc']:.4f}, softpatch "
          f"{soft['image_auroc']:.4f} (pixel {soft['pixel_auroc']:.4f})")
    # SoftPatch's defaults on bottle (the clean-set bars of the other methods)
    # and its point: at least as good as PatchCore when defects slip in.
    assert soft["image_auroc"] >= plain["image_auroc"] and soft["image_auroc"] >= 0.99
    assert soft["pixel_auroc"] >= 0.95
    # Which bank holds the defect patches of the slipped-in images?
    embedder = plain["pipeline"][0]
    feats = cache.transform(embedder, [test.images[i] for i in slipped])
    masks = np.stack([np.asarray(Image.open(test.masks[i]).resize((256, 256))) > 127
                      for i in slipped])
    cell = 256 // feats.shape[1]
    defect = masks.reshape(len(slipped), feats.shape[1], cell, feats.shape[2], cell).mean((2, 4)) > 0.25
    defect_feats = feats[defect]

    def n_in_bank(pipe):
        # Bank rows are copies of training features: in the bank = distance ~0
        # (not exactly 0: the fit may embed the images in other batches, and
        # convolutions round differently with the batch and thread count).
        distances, _ = kneighbors(defect_feats, pipe[-1].memory_bank_, 1)
        return int((distances[:, 0] <= 1e-4 * np.linalg.norm(defect_feats, axis=1)).sum())

    in_plain, in_soft = n_in_bank(plain["pipeline"]), n_in_bank(soft["pipeline"])
    print(f"defect patches in the bank: patchcore {in_plain}, softpatch {in_soft} of {len(defect_feats)}")
    assert in_plain >= 10 and in_soft <= 0.1 * in_plain


def test_padim_on_bottle_accuracy_and_memory():
    """Fit in a fresh process: its peak memory is PaDiM's alone."""
    root = mvtec_category("mvtec_bottle")
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a
    # child of this (large) test process would report the parent's peak.
    code = textwrap.dedent(f"""
        from skanomaly import make_padim
        from skanomaly.datasets import load_mvtec
        from skanomaly.evaluation import evaluate_pipeline
        train, test = load_mvtec({str(root)!r}, "train"), load_mvtec({str(root)!r}, "test")
        pipe = make_padim(random_state=0).fit(train.images[::2])
        assert pipe[-1].precision_.shape == (64, 64, 100, 100)
        kb = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
        r = evaluate_pipeline(pipe, None, test.images, test.target, test.masks, fit=False)
        print(kb / 2**20, r["image_auroc"], r["pixel_auroc"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak_gb, image_auroc, pixel_auroc = map(float, out.stdout.split()[-3:])
    print(f"bottle make_padim: {image_auroc:.4f} / {pixel_auroc:.4f}, fit peak RSS {peak_gb:.2f} GB")
    assert image_auroc >= 0.98 and pixel_auroc >= 0.95
    assert peak_gb < 2.0


@pytest.mark.parametrize("category", ["mvtec_bottle", "mvtec3d_tire"])
def test_calibrated_false_alarm_rate_on_held_out_normals(category, cache):
    """Requested vs empirical false-alarm rate on normal images the model never saw.

    The new normals are a random 30% of the category's normal training images
    (plus validation/good where there is one): exchangeable with the
    calibration images, as the guarantee assumes. (MVTec's test/good images
    are a slightly different acquisition; their rate is reported, not bounded.)
    """
    from scipy.stats import betabinom

    root = mvtec_category(category)
    normals = load_mvtec(root, "train").images
    if (root / "validation").is_dir():
        normals = normals + load_mvtec(root, "validation").images
    order = np.random.default_rng(0).permutation(len(normals))
    n_new = int(0.3 * len(normals))
    fit_images = [normals[i] for i in order[n_new:]]
    new_images = [normals[i] for i in order[:n_new]]
    test = load_mvtec(root, "test")
    test_good = [p for p, t in zip(test.images, test.target) if t == 1]
    alpha = 0.1
    # Every head calibrates through the same base class; DFM is the cheapest
    # to fit, so the test spends its time on data, not on a coreset. The
    # guarantee holds at any resolution: 128 px embeds four times faster.
    pipe = make_dfm(contamination=alpha, image_size=128, random_state=0)
    # 30% held out for calibration: enough calibration scores for a tight law.
    pipe.set_params(gaussiandetector__calibration_size=0.3)
    pipe[:-1].fit(None)
    pipe[-1].fit(cache.transform(pipe[:-1], fit_images))
    flagged = int((pipe[-1].predict(cache.transform(pipe[:-1], new_images)) == -1).sum())
    flagged_good = int((pipe[-1].predict(cache.transform(pipe[:-1], test_good)) == -1).sum())
    n_cal = len(pipe[-1].calibration_scores_)
    k = int(np.floor(alpha * (n_cal + 1)))
    # Flags among m new normals follow a beta-binomial law: the threshold is
    # the k-th lowest of n_cal calibration scores (exchangeability).
    law = betabinom(len(new_images), k, n_cal + 1 - k)
    print(f"{category}: {flagged}/{len(new_images)} held-out normals flagged at alpha={alpha} "
          f"(expected {law.mean():.1f}, 1%-99% range {law.ppf(0.01):.0f}-{law.ppf(0.99):.0f}); "
          f"test/good: {flagged_good}/{len(test_good)}")
    assert law.ppf(0.01) <= flagged <= law.ppf(0.99)


def test_cli_fit_predict_round_trip_on_bottle(tmp_path):
    import csv
    import json

    from skanomaly.cli import main

    root = mvtec_category("mvtec_bottle")
    model = tmp_path / "bottle.joblib"
    # 128 px keeps this round trip quick; accuracy at 256 px is tested above.
    assert main(["fit", "--train", str(root), "--image-size", "128", "-o", str(model)]) == 0
    out = tmp_path / "found"
    assert main(["predict", str(model), str(root / "test" / "broken_large"),
                 str(root / "test" / "good"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 40
    broken = [int(r["label"]) == -1 for r in rows if "/broken_large/" in r["image"]]
    assert np.mean(broken) >= 0.9
    overlay = sorted((out / "overlays").glob("*.png"))[0]
    assert Image.open(overlay).size == (512, 512)
    boxes = json.loads((out / "boxes.json").read_text())["images"]
    with_boxes = [bool(b["boxes"]) for b in boxes if "/broken_large/" in b["image"]]
    assert np.mean(with_boxes) >= 0.9


def test_image_level_sets_evaluate_without_masks(cache):
    """Screw's shared copy has image-level labels only: no masks, no pixel metrics."""
    root = mvtec_category("mvtec_screw")
    train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
    assert all(mask is None for mask in test.masks) and set(test.target) == {-1, 1}
    # A quarter of the training images: what is tested is the mask-less path.
    result = evaluate_pipeline(make_dfm(random_state=0), train.images[::4], test.images,
                               test.target, test.masks, cache=cache)
    print(f"screw make_dfm: image AUROC {result['image_auroc']:.4f}")
    assert np.isnan(result["pixel_auroc"]) and result["image_auroc"] > 0.6
