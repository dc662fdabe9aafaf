"""PatchCore vs SoftPatch when defective images slip into the training set.

Usage: python benchmarks/bench_softpatch_contaminated.py [ROOT] [--fraction 0.1]

Trains both on ROOT's normal images plus ``fraction`` of its defective test
images (labelled as normal) and evaluates on the remaining test images.
"""

import argparse

import numpy as np

from skanomaly import make_patchcore, make_softpatch
from skanomaly.cli import format_table
from skanomaly.datasets import load_mvtec
from skanomaly.evaluation import FeatureCache, evaluate_pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="../shared/data/mvtec_bottle")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, test = load_mvtec(args.root, "train"), load_mvtec(args.root, "test")
    rng = np.random.default_rng(args.seed)
    defective = np.flatnonzero(test.target == -1)
    slipped = set(rng.choice(defective, round(args.fraction * len(defective)), replace=False).tolist())
    rest = [i for i in range(len(test.images)) if i not in slipped]
    cache = FeatureCache()
    rows = []
    for name, factory in (("patchcore", make_patchcore), ("softpatch", make_softpatch)):
        result = evaluate_pipeline(
            factory(random_state=args.seed),
            train.images + [test.images[i] for i in sorted(slipped)],
            [test.images[i] for i in rest], test.target[rest], [test.masks[i] for i in rest],
            cache=cache,
        )
        result.pop("pipeline")
        rows.append({"method": name, "peak_rss_mb": float("nan"), **result})
    print(f"{args.root}: {len(slipped)} defective images slipped into training, "
          f"{len(rest)} test images")
    print(format_table(rows))


if __name__ == "__main__":
    main()
