"""The operating point: what each method's own thresholds do on the panel.

AUROC and AUPRO rank; a production line acts on ``predict``, masks and
boxes at the model's thresholds. For each set of ``--data`` and each method,
the factory with its defaults (``random_state=--seed``) is fitted on
``train/good`` image paths and measured on ``test`` by
:func:`skanomaly.evaluation.evaluate_pipeline`: the share of good images
flagged (nominal: ``contamination``, 0.05), the share of defects flagged,
the oracle recall (the threshold that flags exactly 5% of these good images,
chosen with the labels), image AUROC; with masks, pixel F1 at the calibrated
pixel threshold beside the best pixel F1 over thresholds, the share of good
images with a box, boxes per good image and the share of ground-truth defect
regions a box overlaps.

``cal_*`` columns: the test images are split in two halves (each label
split evenly), the threshold is set from one half's good images as
``skanomaly calibrate`` sets it by default (false-alarm rate 0.05 on
average; the good images join the model's own calibration scores unless a
rank test finds them lower, ``cal_pooled_share`` of the halvings) and the
other half is judged: its good images flagged, defects flagged, and the
oracle recall on that half; ``alone_*`` with the half's good images alone
(``pool=False``); means over 50 seeded halvings.

    python benchmarks/bench_operating_point.py --methods patchcore,padim

Writes ``benchmarks/results/operating_point.json`` (rows accumulate; a row
is replaced when the same set, method and seed is measured again) and
prints a Markdown table.
"""

import argparse
import json
import sys
import warnings

import numpy as np
from _results import PANEL_DATA, SETS, factories, panel_sets, save_json

from skanomaly.datasets import load_mvtec
from skanomaly.evaluation import FeatureCache, evaluate_pipeline

KEYS = ("false_alarm_rate", "recall", "oracle_recall", "image_auroc", "pixel_auroc", "aupro", "pixel_f1",
        "best_pixel_f1", "good_with_box", "boxes_per_good", "region_hit_rate",
        "cal_false_alarm_rate", "cal_recall", "cal_oracle_recall", "cal_pooled_share",
        "alone_false_alarm_rate", "alone_recall", "fit_s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--methods", default="patchcore,padim")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    makers = factories()
    out = _out_path() if args.out is None else args.out
    try:
        with open(out) as fh:
            rows = json.load(fh)["rows"]
    except FileNotFoundError:
        rows = []
    command = "python benchmarks/bench_operating_point.py " + " ".join(argv or sys.argv[1:])
    for set_name, root in panel_sets(args.data, args.sets):
        train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
        cache = FeatureCache()
        for method in args.methods.split(","):
            pipe = makers[method](random_state=args.seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                result = evaluate_pipeline(pipe, train.images, test.images, test.target,
                                           test.masks, cache=cache, return_maps=True)
                result.update(_half_calibration(result, test.target, args.seed))
            row = {"set": set_name, "method": method, "seed": args.seed, "command": command,
                   **{k: result.get(k, float("nan")) for k in KEYS}}
            rows = [r for r in rows if (r["set"], r["method"], r["seed"]) != (set_name, method, args.seed)]
            rows.append(row)
            save_json({"rows": rows}, out)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items() if k != "command"), flush=True)
    print(table(rows))


def _half_calibration(result, target, seed, n_splits=50):
    """Threshold from one half of the test set's good images, judged on the
    other half; the mean over ``n_splits`` random halvings (one halving of a
    set with 20 good images judges 10, too few to read a rate from).
    ``cal_*``: what ``calibrate`` does by default (the good images join the
    model's own calibration scores unless the rank test finds a drift);
    ``alone_*``: the good images alone (``pool=False``)."""
    from skanomaly.calibration import _alike, confident_offset
    from skanomaly.metrics import image_operating_point

    head = result["pipeline"][-1]
    scores = np.asarray(result["scores"]) + head.offset_  # score_samples
    training = np.asarray(head.calibration_scores_)
    target = np.asarray(target)
    rng = np.random.default_rng(seed)
    points = {"cal": [], "alone": []}
    pooled = []
    for _ in range(n_splits):
        first = np.zeros(len(target), bool)
        for label in (1, -1):
            idx = rng.permutation(np.flatnonzero(target == label))
            first[idx[:len(idx) // 2]] = True
        good = scores[first & (target == 1)]
        alike = _alike(good, training)[0]
        pooled.append(alike)
        for name, reference in (("cal", np.r_[good, training] if alike else good), ("alone", good)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # few good images: said below
                offset = confident_offset(reference, head.contamination)
            points[name].append(image_operating_point(target[~first], scores[~first] - offset,
                                                      head.contamination))
    out = {f"{name}_{key}": float(np.mean([p[key] for p in got]))
           for name, got in points.items() for key in got[0]}
    out["cal_pooled_share"] = float(np.mean(pooled))
    return out


def _out_path():
    from pathlib import Path

    return Path(__file__).resolve().parent / "results" / "operating_point.json"


def table(rows):
    """Markdown table of the rows: one line per set and method."""
    head = ["set", "method", "seed", *KEYS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["method"], r["set"], r["seed"])):
        cells = [r["set"], r["method"], str(r["seed"])]
        cells += ["-" if r[k] != r[k] else f"{r[k]:.2f}" for k in KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
