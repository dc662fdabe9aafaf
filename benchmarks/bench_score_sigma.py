"""Trainable heads' image score (``image_score_sigma``), swept over the panel.

For each shared set and seed, each method's factory (a head with an
``image_score_sigma`` parameter: Reverse Distillation, STFPM, MambaAD-style,
CFlow) is fitted once from image paths with its defaults; the image AUROC is then
computed from ``score_samples`` for several ``image_score_sigma`` values
(``set_params`` on the fitted pipeline: the blur only changes how patch
scores become the image score), and the pixel AUROC of ``anomaly_maps``
where the set has masks. This is how those heads' ``image_score_sigma``
defaults were chosen: by the mean and the worst set.

    python benchmarks/bench_score_sigma.py [--methods ...] [--sets ...] [--seeds 0]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, SETS, panel_sets, save_json

HERE = Path(__file__).resolve().parent
SIGMAS = (0.0, 0.5, 1.0, 2.0, 4.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--methods", default="reverse_distillation,stfpm")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default=str(HERE / "results" / "score_sigma.json"))
    args = parser.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    from skanomaly import anomaly_maps, get_method
    from skanomaly.datasets import load_mvtec
    from skanomaly.metrics import pixel_roc_auc

    rows = []
    for name, root in panel_sets(args.data, args.sets):
        train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
        has_masks = any(m is not None for m in test.masks)
        for method in args.methods.split(","):
            for seed in map(int, args.seeds.split(",")):
                pipe = get_method(method).factory(random_state=seed)
                start = time.perf_counter()
                pipe.fit(train.images)
                step, head = pipe.steps[-1]
                row = {"set": name, "method": method, "seed": seed,
                       "default_sigma": head.image_score_sigma,
                       "fit_s": time.perf_counter() - start, "epochs": head.n_iter_,
                       "loss": head.loss_curve_[-1],
                       "validation_loss": (head.validation_loss_curve_ or [None])[-1]}
                for sigma in SIGMAS:
                    pipe.set_params(**{f"{step}__image_score_sigma": sigma})
                    row[f"s{sigma:g}"] = roc_auc_score(test.target == -1,
                                                       -pipe.score_samples(test.images))
                if has_masks:
                    row["pixel"] = pixel_roc_auc(test.masks, anomaly_maps(pipe, test.images))
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
                save_json({"command": " ".join(sys.argv), "rows": rows}, args.out)
    summarise(rows)


def summarise(rows):
    """Markdown: per method and sigma, the seed-averaged AUROC per set, mean, worst."""
    sets = [s for s in SETS if any(r["set"] == s for r in rows)]
    print("| method | sigma | " + " | ".join(sets) + " | mean | worst |")
    print("|---|---|" + "---|" * (len(sets) + 2))
    for method in dict.fromkeys(r["method"] for r in rows):
        for sigma in SIGMAS:
            key = f"s{sigma:g}"
            per_set = [np.mean([r[key] for r in rows if r["set"] == s and r["method"] == method])
                       for s in sets]
            print(f"| {method} | {sigma:g} | " + " | ".join(f"{v:.3f}" for v in per_set)
                  + f" | {np.mean(per_set):.3f} | {min(per_set):.3f} |")


if __name__ == "__main__":
    main()
