"""CFlow on pooled and unpooled patches, alone and combined, on the panel.

``make_cflow`` models PatchCore's 3x3-averaged patches; CFlow's own
features are unpooled. On tire the unpooled flow scores higher, on
KolektorSDD the pooled one. This fits ``make_cflow``'s joint flow
(``map_stage=None``) on each set twice, at ``aggregation_size`` 3 and 1,
and reports image AUROC of each alone and of two combinations: the sum of
the two image scores, each standardised by the training images' own scores
(mean and standard deviation), and the maximum of the two NLL maps summed.
Image scores are the maximum of the map after a Gaussian blur of 0, 1 and
2 cells.

    python benchmarks/bench_cflow_pooling.py [--sets ...] [--seed 0]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, SETS, panel_sets, save_json

HERE = Path(__file__).resolve().parent
POOLINGS = (3, 1)
SIGMAS = (0.0, 1.0, 2.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "cflow_pooling.json"))
    args = parser.parse_args(argv)

    from scipy.ndimage import gaussian_filter
    from sklearn.metrics import roc_auc_score

    from skanomaly import make_cflow
    from skanomaly.datasets import load_mvtec

    def image_scores(grids, sigma):
        return np.array([gaussian_filter(g, sigma).max() for g in grids])

    rows = []
    for name, root in panel_sets(args.data, args.sets):
        train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
        anomalous = test.target == -1
        grids = {}
        for size in POOLINGS:
            pipe = make_cflow(map_stage=None, random_state=args.seed)
            pipe.set_params(patchembedder__aggregation_size=size)
            start = time.perf_counter()
            train_x = pipe[:-1].fit_transform(train.images)
            head = pipe.steps[-1][1].fit(train_x)
            print(f"{name} aggregation_size={size} fit {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
            grids[size] = (head.score_patches(train_x),
                           head.score_patches(pipe[:-1].transform(test.images)))
        for sigma in SIGMAS:
            row = {"set": name, "seed": args.seed, "image_score_sigma": sigma}
            combined = 0.0
            for size, (train_grid, test_grid) in grids.items():
                own = image_scores(train_grid, sigma)
                test_scores = image_scores(test_grid, sigma)
                row[f"aggregation_size={size}"] = roc_auc_score(anomalous, test_scores)
                combined = combined + (test_scores - own.mean()) / own.std()
            row["standardised image scores summed"] = roc_auc_score(anomalous, combined)
            summed_map = sum(test_grid for _, test_grid in grids.values())
            row["maps summed"] = roc_auc_score(anomalous, image_scores(summed_map, sigma))
            print(row, file=sys.stderr, flush=True)
            rows.append(row)
        save_json({"command": " ".join(sys.argv), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
