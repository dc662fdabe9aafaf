"""PatchCore on an MVTec-layout category: accuracy, fit time split, inference, peak RSS.

Usage: python benchmarks/bench_patchcore.py [ROOT] [--repeats N] [--json OUT]

Prints embedding and coreset time separately (median of repeats), inference
ms/image (embedding + scoring), image and pixel AUROC, and the process's peak
RSS. ROOT defaults to ../shared/data/mvtec_bottle.
"""

import argparse
import json
import resource
import statistics
import time

from sklearn.metrics import roc_auc_score

from skanomaly import anomaly_maps, make_patchcore
from skanomaly.datasets import load_mvtec
from skanomaly.metrics import pixel_roc_auc


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_once(root, seed):
    train = load_mvtec(root, "train")
    test = load_mvtec(root, "test")
    pipe = make_patchcore(random_state=seed)
    embedder, detector = pipe.steps[0][1], pipe.steps[1][1]
    t0 = time.perf_counter()
    features = embedder.fit_transform(train.images)
    t1 = time.perf_counter()
    detector.fit(features)
    t2 = time.perf_counter()
    scores = pipe.decision_function(test.images)
    t3 = time.perf_counter()
    rss_fit_and_score = peak_rss_mb()  # before the metrics, which hold all pixels
    maps = anomaly_maps(pipe, test.images)
    return {
        "embed_s": t1 - t0,
        "coreset_and_calibration_s": t2 - t1,
        "fit_s": t2 - t0,
        "infer_ms_per_image": 1000 * (t3 - t2) / len(test.images),
        "image_auroc": roc_auc_score(test.target, scores),
        "pixel_auroc": pixel_roc_auc(test.masks, maps),
        "peak_rss_fit_score_mb": rss_fit_and_score,
        "n_train": len(train.images),
        "memory_bank": int(detector.memory_bank_.shape[0]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="../shared/data/mvtec_bottle")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    runs = [run_once(args.root, seed) for seed in range(args.repeats)]
    summary = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    summary["peak_rss_with_metrics_mb"] = peak_rss_mb()
    summary["root"] = args.root
    for key, value in summary.items():
        print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"runs": runs, "median": summary}, fh, indent=2)


if __name__ == "__main__":
    main()
