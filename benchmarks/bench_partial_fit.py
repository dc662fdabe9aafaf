"""partial_fit against one fit: does a model grown in two steps score like one
fitted on everything?

For each shared set and method, the factory's defaults (``random_state``
seed) are fitted on all of ``train/good`` (image paths) once, and once on a
random half followed by ``partial_fit`` on the other half (the public
calls a user makes). Both are measured on ``test``: image AUROC, pixel AUROC
and AUPRO where the set has masks, and the fit seconds of each path::

    python benchmarks/bench_partial_fit.py                       # patchcore, padim
    python benchmarks/bench_partial_fit.py --methods patchcore --sets mvtec_bottle

Writes ``benchmarks/results/partial_fit.json`` and prints a Markdown table.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, SETS, factories, panel_sets, save_json

HERE = Path(__file__).resolve().parent


def run(root, method, seed):
    from skanomaly.datasets import load_mvtec
    from skanomaly.evaluation import evaluate_pipeline

    train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
    masks = test.masks if any(m is not None for m in test.masks) else None
    order = np.random.default_rng(seed).permutation(len(train.images))
    half = len(order) // 2
    first = [train.images[i] for i in sorted(order[:half])]
    second = [train.images[i] for i in sorted(order[half:])]
    for protocol in ("fit", "fit + partial_fit"):
        pipe = factories()[method](random_state=seed)
        start = time.perf_counter()
        if protocol == "fit":
            pipe.fit(train.images)
        else:
            pipe.fit(first).partial_fit(second)
        fit_s = time.perf_counter() - start
        result = evaluate_pipeline(pipe, None, test.images, test.target, masks, fit=False)
        row = {"set": root.name, "method": method, "protocol": protocol, "seed": seed,
               "fit_s": fit_s, "bank_rows": len(getattr(pipe[-1], "memory_bank_", ())),
               **{k: float(result[k]) for k in ("image_auroc", "pixel_auroc", "aupro")}}
        print(f"  {row}", file=sys.stderr, flush=True)
        yield row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--methods", default="patchcore,padim")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "partial_fit.json"))
    args = parser.parse_args(argv)
    rows = []
    for _, root in panel_sets(args.data, args.sets):
        for method in args.methods.split(","):
            rows.extend(run(root, method, args.seed))
            save_json({"rows": rows}, args.out)  # after each set: nothing lost
    print("| set | method | protocol | image AUROC | pixel AUROC | AUPRO | fit s | bank rows |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[k]:.3f}" if r[k] == r[k] else "-" for k in ("image_auroc", "pixel_auroc", "aupro")]
        print(f"| {r['set']} | {r['method']} | {r['protocol']} | " + " | ".join(cells)
              + f" | {r['fit_s']:.1f} | {r['bank_rows'] or '-'} |")


if __name__ == "__main__":
    main()
