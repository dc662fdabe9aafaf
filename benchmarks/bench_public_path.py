"""Scores and maps from image paths through the public API, and where the time goes.

Default ``make_patchcore()`` fitted on bottle's ``train/good`` paths; then,
on the test paths (decoding included), median of ``--repeats`` after a
warm-up:

- ``anomaly_maps(pipe, paths, return_scores=True)``: what a user calls for
  scores and maps in one pass (ms per image);
- ``pipe.score_samples(paths)``: scores only;
- the parts, timed separately in the same run: decoding the files
  (``load_image``), the embedder on the paths (``pipe[:-1].transform``:
  decoding, resizing, backbone), the head's search on those features
  (``score_samples_and_patches``), and the maps' upsampling and blur at
  each image's size (``upsample_patch_scores``);
- the search's ranking GEMM alone on its shape (one image's patches
  against the bank; bfloat16 where the CPU has it natively, else float32),
  the floor of the exact search;
- with ``--anomalib`` (needs ``pip install anomalib``): anomalib 2.x's
  ``PatchcoreModel.forward`` on the same paths, same weights, with our bank,
  batches of 16, decoding included (as ``bench_vs_anomalib.py``), timed in
  pairs with ``anomaly_maps`` (each repeat runs both); the speedup is the
  median of the pairs' ratios.

::

    python benchmarks/bench_public_path.py
    python benchmarks/bench_public_path.py --anomalib

Writes ``benchmarks/results/public_path.json``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, save_json

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = PANEL_DATA / "mvtec_bottle"


def _median_ms(call, n_images, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / n_images


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--anomalib", action="store_true", help="time anomalib's forward too")
    parser.add_argument("--out", default=str(HERE / "results" / "public_path.json"))
    args = parser.parse_args(argv)

    import torch

    from skanomaly import anomaly_maps, make_patchcore
    from skanomaly.datasets import load_mvtec
    from skanomaly.evaluation import _image_shapes
    from skanomaly.images import load_image
    from skanomaly.maps import _model_input_shape, upsample_patch_scores

    train, test = load_mvtec(args.data, "train"), load_mvtec(args.data, "test")
    paths, n = test.images, len(test.images)
    pipe = make_patchcore(random_state=0).fit(train.images)
    head = pipe[-1]
    anomaly_maps(pipe, paths[:4], return_scores=True)  # warm-up
    r = {"images": n, "bank_rows": int(len(head.memory_bank_)), "torch_threads": torch.get_num_threads()}
    r["maps_and_scores_ms"] = _median_ms(lambda: anomaly_maps(pipe, paths, return_scores=True),
                                         n, args.repeats)
    r["score_samples_ms"] = _median_ms(lambda: pipe.score_samples(paths), n, args.repeats)
    r["decode_ms"] = _median_ms(lambda: [load_image(p) for p in paths], n, args.repeats)
    features = pipe[:-1].transform(paths)
    r["embed_ms"] = _median_ms(lambda: pipe[:-1].transform(paths), n, args.repeats)
    r["search_ms"] = _median_ms(lambda: head.score_samples_and_patches(features), n, args.repeats)
    _, patches = head.score_samples_and_patches(features)
    shapes = _image_shapes(paths)
    model_shape = _model_input_shape(pipe[:-1])
    r["maps_ms"] = _median_ms(lambda: upsample_patch_scores(patches, shapes, model_shape=model_shape),
                              n, args.repeats)
    # The exact search's floor: its ranking GEMM alone (bfloat16 where the
    # CPU has it natively, as the search does), one image's patches against
    # the bank, in the search's cache-sized row blocks into a reused buffer.
    from skanomaly.neighbors import _native_bfloat16, _rows_per_block

    dtype = torch.bfloat16 if _native_bfloat16() else torch.float32
    queries = torch.randn(features.shape[1] * features.shape[2], features.shape[3]).to(dtype)
    bank = torch.from_numpy(np.ascontiguousarray(head.memory_bank_)).to(dtype)
    rows = min(_rows_per_block(len(bank)), len(queries))
    out = torch.empty((rows, len(bank)), dtype=dtype)

    def ranking_gemm():
        for at in range(0, len(queries), rows):
            block = queries[at:at + rows]
            torch.mm(block, bank.T, out=out[:len(block)])

    gemm_s = _median_ms(lambda: [ranking_gemm() for _ in range(5)], 5, args.repeats) / 1000
    r["gemm_dtype"] = str(dtype).replace("torch.", "")
    r["gemm_gflops"] = 2 * queries.shape[0] * bank.shape[0] * bank.shape[1] / gemm_s / 1e9
    r["gemm_floor_ms"] = 1000 * gemm_s

    if args.anomalib:
        from bench_vs_anomalib import _anomalib_forward, _anomalib_model

        from skanomaly.backbones import load_backbone

        model = _anomalib_model(load_backbone("efficientnet_lite0"))
        model.memory_bank = torch.from_numpy(np.ascontiguousarray(head.memory_bank_))
        _anomalib_forward(model, paths)  # warm-up
        # Paired: each repeat times both calls back to back, so a slow spell
        # of a shared machine weighs on both sides of each ratio.
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(_median_ms(lambda: anomaly_maps(pipe, paths, return_scores=True), n, 1))
            theirs.append(_median_ms(lambda: _anomalib_forward(model, paths), n, 1))
        r["paired_maps_and_scores_ms"] = float(np.median(ours))
        r["anomalib_forward_ms"] = float(np.median(theirs))
        r["speedup_maps_and_scores"] = float(np.median(np.divide(theirs, ours)))

    save_json(r, args.out)
    print(json.dumps(r, indent=2))
    print("\n| call or part | ms per image |\n|---|---|")
    for key in ("maps_and_scores_ms", "score_samples_ms", "decode_ms", "embed_ms", "search_ms",
                "maps_ms", "gemm_floor_ms", "paired_maps_and_scores_ms", "anomalib_forward_ms"):
        if key in r:
            print(f"| {key[:-3]} | {r[key]:.1f} |")
    if "speedup_maps_and_scores" in r:
        print(f"\nspeedup over anomalib (median of paired runs) {r['speedup_maps_and_scores']:.2f}x")
    print(f"\nranking GEMM ({r['gemm_dtype']}) {r['gemm_gflops']:.0f} GFLOPS", file=sys.stderr)


if __name__ == "__main__":
    main()
