"""Three products in one GroupedDetector: routing accuracy, and each
product's AUROC routed by the nearest product against its own model.

Default PatchCore (``random_state=0``) per product, fitted from image paths
on each set's ``train/good``; the test images of all products are scored
once with their product given (exactly each product's own model: the same
clone on the same images) and once routed by the default router (1-NN on
pooled Lite0 features of the training images)::

    python benchmarks/bench_grouped.py
    python benchmarks/bench_grouped.py --sets mvtec_bottle,mvtec3d_tire,mvtec_screw,kolektorsdd

Writes ``benchmarks/results/grouped.json`` and prints a Markdown table.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, panel_sets, save_json

HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--sets", default="mvtec_bottle,mvtec3d_tire,mvtec_screw")
    parser.add_argument("--out", default=str(HERE / "results" / "grouped.json"))
    args = parser.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    from skanomaly import GroupedDetector, make_patchcore
    from skanomaly.datasets import load_mvtec

    train, groups, tests = [], [], {}
    for name, root in panel_sets(args.data, args.sets):
        images = load_mvtec(root, "train").images
        train += images
        groups += [name] * len(images)
        tests[name] = load_mvtec(root, "test")
    start = time.perf_counter()
    model = GroupedDetector(make_patchcore(random_state=0)).fit(train, groups=groups)
    fit_s = time.perf_counter() - start
    rows = []
    for name, test in tests.items():
        bad = test.target == -1
        own = model.decision_function(test.images, groups=[name] * len(test.images))
        start = time.perf_counter()
        routed_to = model.route(test.images)
        routed = model.decision_function(test.images)
        row = {"set": name, "routing_accuracy": float(np.mean(routed_to == name)),
               "own_model_auroc": float(roc_auc_score(bad, -own)),
               "routed_auroc": float(roc_auc_score(bad, -routed)),
               "ms_per_image_routed": 1000 * (time.perf_counter() - start) / len(test.images),
               "misrouted_to": sorted(set(routed_to[routed_to != name].tolist()))}
        print(f"  {row}", file=sys.stderr, flush=True)
        rows.append(row)
    save_json({"fit_s": fit_s, "rows": rows}, args.out)
    print(f"fit of {len(model.groups_)} products on {len(train)} images: {fit_s:.0f} s\n")
    print("| product | routing accuracy | own model image AUROC | routed image AUROC | difference |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['routing_accuracy']:.3f} | {r['own_model_auroc']:.3f} | "
              f"{r['routed_auroc']:.3f} | {r['routed_auroc'] - r['own_model_auroc']:+.3f} |")


if __name__ == "__main__":
    main()
