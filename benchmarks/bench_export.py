"""Deployment latency: the torch estimator against its ONNX export.

One fitted pipeline per method (defaults, fitted on a set's train/good
images), exported with ``skanomaly.export.to_onnx``, then scores and maps of
the test images from their paths (decoding included) through three public
calls, in one run: ``anomaly_maps(pipe, paths, return_scores=True)``, the
same on ``skanomaly_runtime.load(path)`` (onnxruntime) and with
``backend="openvino"``. Each is warmed up on 4 images, then timed over all
test images, best of ``--repeats``. Also reports the largest relative score
difference against the estimator and the export's size.

    python benchmarks/bench_export.py --methods patchcore,padim --set mvtec_bottle
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _results import factories, save_json

import skanomaly_runtime
from skanomaly import anomaly_maps
from skanomaly.datasets import load_mvtec
from skanomaly.export import to_onnx


def _timed(call, paths, repeats):
    call(paths[:4])
    best, result = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call(paths)
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="patchcore")
    parser.add_argument("--set", default="mvtec_bottle")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/export.json")
    args = parser.parse_args(argv)
    root = Path(args.data) / args.set
    train = load_mvtec(root, split="train")
    test = load_mvtec(root, split="test")
    paths = [str(p) for p in test.images]
    rows = []
    for name in args.methods.split(","):
        pipe = factories()[name](random_state=0).fit(train.images)
        path = to_onnx(pipe, Path(args.out).with_name(f"{args.set}_{name}.onnx"))
        calls = {"torch estimator": lambda x: anomaly_maps(pipe, x, return_scores=True)}
        for backend in ("onnxruntime", "openvino"):
            try:
                model = skanomaly_runtime.load(path, backend=backend)
            except ImportError as exc:
                print(f"skipping {backend}: {exc}", file=sys.stderr)
                continue
            calls[backend] = lambda x, m=model: m.anomaly_maps(x, return_scores=True)
        reference = None
        for engine, call in calls.items():
            seconds, (maps, scores) = _timed(call, paths, args.repeats)
            if reference is None:
                reference = scores
            row = {"set": args.set, "method": name, "engine": engine,
                   "ms_per_image": 1000 * seconds / len(paths),
                   "images_per_s": len(paths) / seconds,
                   "max_rel_score_diff": float(np.max(np.abs(scores - reference) / np.abs(reference))),
                   "onnx_mb": path.stat().st_size / 1e6}
            rows.append(row)
            print(row, flush=True)
    save_json({"meta": {"command": " ".join(["benchmarks/bench_export.py"] + (argv or sys.argv[1:])),
                        "n_images": len(paths)}, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
