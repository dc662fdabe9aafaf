"""Choosing a method from normal images alone: synthetic-defect ranking vs real defects.

For each shared set, every candidate method (factory defaults) is fitted on a
random 80% of ``train/good``; it is then judged twice:

- **synthetic**: ``SyntheticDefectScorer`` on the held-out 20% of normal
  training images (clean copies against cut-paste / scratch / blob copies,
  at the scorer's severities or ``--severities``), what a user with normal
  images only can compute;
- **real**: image AUROC on the set's real test images (good and defective).

The synthetic pick (highest synthetic score) is "within 0.01" when its real
AUROC is at most 0.01 below the best candidate's real AUROC. Also reported:
Spearman's rank correlation of the two rankings per set.

    python benchmarks/bench_model_selection.py [--methods patchcore,padim,...] [--severities 1.0]
"""

import argparse
import sys
from pathlib import Path

from _results import PANEL_DATA, SETS, factories, panel_sets, save_json

HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--methods", default=None,
                        help="comma-separated (default: every method without a training loop)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--severities", default=None,
                        help="comma-separated defect severities (default: the scorer's)")
    parser.add_argument("--out", default=str(HERE / "results" / "model_selection.json"))
    args = parser.parse_args(argv)

    from scipy.stats import spearmanr
    from sklearn.model_selection import train_test_split

    from skanomaly.datasets import load_mvtec
    from skanomaly.evaluation import FeatureCache, evaluate_pipeline
    from skanomaly.model_selection import SyntheticDefectScorer

    methods = args.methods.split(",") if args.methods else list(factories(trained=False))
    scorer = SyntheticDefectScorer(random_state=args.seed)
    if args.severities:
        scorer.severities = tuple(float(v) for v in args.severities.split(","))
    report = {"command": " ".join(sys.argv), "sets": {}}
    for name, root in panel_sets(args.data, args.sets):
        train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
        # The split of `skanomaly evaluate --synthetic`: 20% held out to paint on.
        fit_images, held = train_test_split(train.images, test_size=0.2, random_state=args.seed)
        cache = FeatureCache()
        rows = {}
        for method in methods:
            pipe = factories()[method](random_state=args.seed)
            real = evaluate_pipeline(pipe, fit_images, test.images, test.target, cache=cache)
            synthetic = scorer(real["pipeline"], held)
            rows[method] = {"synthetic": synthetic, "real": real["image_auroc"]}
            print(f"{name} {method}: synthetic {synthetic:.3f}, real {real['image_auroc']:.3f}",
                  file=sys.stderr, flush=True)
        pick = max(rows, key=lambda m: rows[m]["synthetic"])
        best = max(rows, key=lambda m: rows[m]["real"])
        rho = spearmanr([r["synthetic"] for r in rows.values()],
                        [r["real"] for r in rows.values()]).statistic
        report["sets"][name] = {
            "rows": rows, "synthetic_pick": pick, "real_best": best,
            "pick_real_auroc": rows[pick]["real"], "best_real_auroc": rows[best]["real"],
            "within_0.01": bool(rows[pick]["real"] >= rows[best]["real"] - 0.01),
            "spearman": float(rho),
        }
        save_json(report, args.out)
    print("| set | synthetic pick (real AUROC) | real best (AUROC) | within 0.01 | Spearman |")
    print("|---|---|---|---|---|")
    for name, r in report["sets"].items():
        print(f"| {name} | {r['synthetic_pick']} ({r['pick_real_auroc']:.3f}) | "
              f"{r['real_best']} ({r['best_real_auroc']:.3f}) | "
              f"{'yes' if r['within_0.01'] else 'no'} | {r['spearman']:.2f} |")
    hits = sum(r["within_0.01"] for r in report["sets"].values())
    print(f"\npick within 0.01 of the best on {hits} of {len(report['sets'])} sets")


if __name__ == "__main__":
    main()
