"""Few normal images: AnomalyDINO and PatchCore at k = 1, 2, 4, 8 shots.

For each set of ``--sets`` (MVTec AD layout under ``--data``), ``--draws``
random draws of k training images (seeds 0, 1, ...), each method's factory
with its defaults fitted on the k images as given (k >= 2: a threshold
needs held-out images) and on their
``dihedral_copies`` (``--copies`` views each: right-angle rotations, then
mirror images), scored on the whole test set; and once on the full training
set for reference. Image AUROC (and pixel AUROC where the set has masks),
mean over the draws.

    python benchmarks/bench_few_shot.py --sets mvtec_bottle,mvtec_screw

Writes ``benchmarks/results/few_shot.json`` and prints a Markdown table.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, SETS, factories, panel_sets, save_json

HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--sets", default=",".join(SETS[:1] + SETS[2:3]))
    parser.add_argument("--methods", default="anomalydino,patchcore")
    parser.add_argument("--shots", default="1,2,4,8")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--out", default=str(HERE / "results" / "few_shot.json"))
    args = parser.parse_args(argv)

    from skanomaly.augment import dihedral_copies
    from skanomaly.datasets import load_mvtec
    from skanomaly.evaluation import FeatureCache, evaluate_pipeline

    rows = []
    for name, root in panel_sets(args.data, args.sets):
        train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
        masks = test.masks if any(m is not None for m in test.masks) else None
        cache = FeatureCache()
        for method in args.methods.split(","):
            jobs = [("all", 0, None, train.images)]
            for k in [int(s) for s in args.shots.split(",")]:
                for draw in range(args.draws):
                    pick = np.random.default_rng(draw).choice(len(train.images), k, replace=False)
                    few = [train.images[i] for i in pick]
                    # One image cannot both fill a bank and set its threshold:
                    # plain fits need two.
                    jobs += [(k, draw, False, few)] * (k > 1) + [(k, draw, True, few)]
            for k, draw, augmented, images in jobs:
                if augmented:
                    images = dihedral_copies(images, args.copies)
                pipe = factories()[method](random_state=draw)
                result = evaluate_pipeline(pipe, images, test.images, test.target, masks,
                                           cache=cache)
                result.pop("pipeline")
                row = {"set": name, "method": method, "shots": k, "draw": draw,
                       "copies": args.copies if augmented else 1,
                       **{key: float(v) for key, v in result.items()}}
                print(f"  {row}", file=sys.stderr, flush=True)
                rows.append(row)
                save_json({"command": " ".join(sys.argv), "rows": rows}, args.out)
    print("| set | method | shots | views | image AUROC | pixel AUROC |\n|---|---|---|---|---|---|")
    keys = sorted({(r["set"], r["method"], str(r["shots"]), r["copies"]) for r in rows},
                  key=lambda t: (t[0], t[1], t[2] != "all", int(t[2]) if t[2] != "all" else 0, t[3]))
    for s, m, k, c in keys:
        found = [r for r in rows if (r["set"], r["method"], str(r["shots"]), r["copies"]) == (s, m, k, c)]
        image = np.mean([r["image_auroc"] for r in found])
        pixel = np.mean([r["pixel_auroc"] for r in found])
        print(f"| {s} | {m} | {k} | {c} | {image:.3f} | {pixel:.3f} |")


if __name__ == "__main__":
    main()
