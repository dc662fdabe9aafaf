"""Could an int8 GEMM rank PatchCore's bank search, with a proof, as bfloat16 does?

Fits ``make_patchcore`` on bottle's train/good images, embeds a few of its
test images, and for each patch compares the exact ranking values
(``||b||^2 - 2 x.b`` on the bank centred on its mean) with int8 products
(weights per bank row, activations per tensor as onnxruntime's
DynamicQuantizeLinear, or per patch; 8 bits, or 7 as AVX2 without VNNI
needs to avoid saturation). It reports the actual error, the worst-case
bound a proof must use, and how many bank rows per patch fall within twice
that bound of the approximate minimum: the rows an exact check would then
have to read.

    python benchmarks/bench_int8_ranking.py [--images 8]
"""

import argparse
import sys

import numpy as np
from _results import PANEL_DATA, save_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA / "mvtec_bottle"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from skanomaly import make_patchcore
    from skanomaly.datasets import load_mvtec

    train, test = load_mvtec(args.data, "train"), load_mvtec(args.data, "test")
    pipe = make_patchcore(random_state=0).fit(train.images)
    bank = pipe[-1].memory_bank_.astype(np.float64)
    step = max(1, len(test.images) // args.images)
    x = pipe[0].transform(test.images[::step][:args.images]).reshape(-1, bank.shape[1])
    centre = bank.mean(0)
    weights = -2.0 * (bank - centre).T
    bias = ((bank - centre) ** 2).sum(1)
    xc = x.astype(np.float64) - centre
    exact = bias + xc @ weights
    ranked = np.sort(exact, axis=1)
    rows = [{"what": "exact", "patches": len(x), "bank_rows": len(bank),
             "median_gap_first_second": float(np.median(ranked[:, 1] - ranked[:, 0]))}]
    for bits, per_patch in [(8, False), (7, False), (8, True), (7, True)]:
        w_scale = np.abs(weights).max(0) / (2 ** (bits - 1) - 1)
        wq = np.round(weights / w_scale)
        if per_patch:
            a_scale = np.abs(xc).max(1, keepdims=True) / 127
            xq = np.round(xc / a_scale)
        else:
            low, high = min(xc.min(), 0), max(xc.max(), 0)
            a_scale = np.full((len(xc), 1), (high - low) / 255)
            zero = np.round(-low / a_scale[0, 0])
            xq = np.clip(np.round(xc / a_scale) + zero, 0, 255) - zero
        approx = bias + (xq * a_scale) @ (wq * w_scale)
        bound = (a_scale[:, 0] * np.abs(weights).sum(0).max()
                 + w_scale.max() / 2 * np.abs(xc).sum(1)
                 + xc.shape[1] * a_scale[:, 0] * w_scale.max() / 2)
        within = (approx <= approx.min(1, keepdims=True) + 2 * bound[:, None]).sum(1)
        rows.append({"what": f"int8 {bits}-bit weights, activations per "
                             f"{'patch' if per_patch else 'tensor'}",
                     "median_actual_error": float(np.median(np.abs(approx - exact).max(1))),
                     "median_bound": float(np.median(bound)),
                     "candidate_rows_median": float(np.median(within)),
                     "candidate_rows_mean": float(within.mean())})
    for row in rows:
        print(row, flush=True)
    if args.out:
        save_json({"command": " ".join(sys.argv), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
