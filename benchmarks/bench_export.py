"""Deployment latency: the torch estimator against its ONNX export.

One fitted pipeline per method (defaults, fitted on a set's train/good
images), exported with ``skanomaly.export.to_onnx``, then scores and maps of
the test images from their paths (decoding included) through three public
calls, in one run: ``anomaly_maps(pipe, paths, return_scores=True)``, the
same on ``skanomaly_runtime.load(path)`` (onnxruntime) and with
``backend="openvino"``. Each is warmed up on 4 images, then timed over all
test images, best of ``--repeats``. Also reports the largest relative score
difference against the estimator and the export's size.

With ``--anomalib`` (needs ``pip install anomalib openvino onnx``), PatchCore
also gets anomalib 2.x's row: its ``PatchcoreModel`` with the same
EfficientNet-Lite0 weights and our fitted bank, exported to ONNX by
``torch.onnx.export`` and compiled by OpenVINO's CPU plugin (what anomalib's
OpenVINO export does), fed batches of 16 images decoded and resized from the
same paths (its maps stay at 256 px).

    python benchmarks/bench_export.py --methods patchcore,padim --set mvtec_bottle
    python benchmarks/bench_export.py --methods patchcore --anomalib --float32-search
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, factories, save_json

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


def _anomalib_openvino(pipe, folder, batch_size=16):
    """``call(paths) -> (maps, scores)`` through anomalib's PatchcoreModel
    with our weights and bank, exported to ONNX and compiled by OpenVINO."""
    import openvino as ov
    import torch
    from bench_vs_anomalib import _anomalib_model, _tensors

    from skanomaly.backbones import load_backbone

    model = _anomalib_model(load_backbone("efficientnet_lite0"))
    model.memory_bank = torch.from_numpy(np.ascontiguousarray(pipe[-1].memory_bank_))
    onnx_path = Path(folder) / "anomalib_patchcore.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.zeros(1, 3, 256, 256),), str(onnx_path),
                      input_names=["input"], output_names=["pred_score", "anomaly_map"],
                      dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    compiled = ov.Core().compile_model(ov.convert_model(str(onnx_path)), "CPU")

    def call(paths):
        scores, maps = [], []
        for at in range(0, len(paths), batch_size):
            out = compiled(_tensors(paths[at:at + batch_size]).numpy())
            scores.append(np.ravel(out[0]))
            maps.extend(np.asarray(out[1])[:, 0])
        return maps, -np.concatenate(scores)

    return call


def _float32_search(pipe):
    """The estimator's call with the bfloat16 ranking switched off: the search
    a CPU without native bfloat16 runs (a proxy for one on this machine)."""
    import skanomaly.neighbors as neighbors

    def call(paths):
        native = neighbors._native_bfloat16
        neighbors._native_bfloat16 = lambda: False
        try:
            return anomaly_maps(pipe, paths, return_scores=True)
        finally:
            neighbors._native_bfloat16 = native

    return call


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="patchcore")
    parser.add_argument("--set", default="mvtec_bottle")
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--anomalib", action="store_true",
                        help="add anomalib's PatchCore through OpenVINO (same weights and bank)")
    parser.add_argument("--float32-search", action="store_true",
                        help="add the torch estimator with its float32 search, as it runs on "
                             "CPUs without native bfloat16 (e.g. AVX2-only)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "export.json"))
    args = parser.parse_args(argv)
    root = Path(args.data) / args.set
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    train = load_mvtec(root, split="train")
    test = load_mvtec(root, split="test")
    paths = [str(p) for p in test.images]
    rows = []
    for name in args.methods.split(","):
        pipe = factories()[name](random_state=0).fit(train.images)
        path = to_onnx(pipe, Path(args.out).with_name(f"{args.set}_{name}.onnx"))
        calls = {"torch estimator": lambda x: anomaly_maps(pipe, x, return_scores=True)}
        if args.float32_search:
            calls["torch estimator, float32 search"] = _float32_search(pipe)
        for backend in ("onnxruntime", "openvino"):
            try:
                model = skanomaly_runtime.load(path, backend=backend)
            except ImportError as exc:
                print(f"skipping {backend}: {exc}", file=sys.stderr)
                continue
            calls[backend] = lambda x, m=model: m.anomaly_maps(x, return_scores=True)
        if args.anomalib and name == "patchcore":
            calls["anomalib 2.x OpenVINO"] = _anomalib_openvino(pipe, Path(args.out).parent)
        reference = None
        for engine, call in calls.items():
            seconds, (maps, scores) = _timed(call, paths, args.repeats)
            if reference is None:
                reference = scores
            # anomalib's scores are its own (raw pred_score, its map and
            # scoring rules): no score difference is claimed for its row.
            same_model = not engine.startswith("anomalib")
            row = {"set": args.set, "method": name, "engine": engine,
                   "ms_per_image": 1000 * seconds / len(paths),
                   "images_per_s": len(paths) / seconds,
                   "max_rel_score_diff": (float(np.max(np.abs(scores - reference) / np.abs(reference)))
                                          if same_model else None),
                   "onnx_mb": path.stat().st_size / 1e6}
            rows.append(row)
            print(row, flush=True)
    save_json({"meta": {"command": " ".join(["benchmarks/bench_export.py"] + (argv or sys.argv[1:])),
                        "n_images": len(paths)}, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
