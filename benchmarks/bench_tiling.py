"""Tiling against downscaling: small defects on large images, bounded memory.

Two measurements, each in a fresh process so that its peak RSS is its own:

1. Accuracy on a set with masks (default bottle, 900 px originals): default
   PatchCore at 256 px (plain downscaling), at ``--size`` px whole, and at
   ``--size`` px in 256 px tiles (``patchembedder__tile_size=256``): pixel
   AUROC, AUPRO, image AUROC, fit s, ms per test image, peak RSS.
2. Embedding memory at ``--big`` px (default 2048): ``PatchEmbedder``'s
   transform of 4 images whole against in 256 px tiles, peak RSS and s.

::

    python benchmarks/bench_tiling.py
    python benchmarks/bench_tiling.py --set kolektorsdd --size 512 --big 2048

Writes ``benchmarks/results/tiling.json`` and prints a Markdown table.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _results import PANEL_DATA, save_json

HERE = Path(__file__).resolve().parent

_FIT = """
import json, resource, sys, time
from skanomaly import make_patchcore
from skanomaly.datasets import load_mvtec
from skanomaly.evaluation import evaluate_pipeline
root, size, tile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pipe = make_patchcore(image_size=size, random_state=0)
if tile != "none":
    pipe.set_params(patchembedder__tile_size=int(tile))
train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
start = time.perf_counter()
pipe.fit(train.images)
fit_s = time.perf_counter() - start
r = evaluate_pipeline(pipe, None, test.images, test.target, test.masks, fit=False)
print(json.dumps({"image_auroc": r["image_auroc"], "pixel_auroc": r["pixel_auroc"],
                  "aupro": r["aupro"], "fit_s": fit_s, "ms_per_image": r["ms_per_image"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_EMBED = """
import json, resource, sys, time
import numpy as np
from skanomaly import PatchEmbedder
size, tile = int(sys.argv[1]), sys.argv[2]
images = np.random.default_rng(0).random((4, size, size, 3)).astype(np.float32)
embedder = PatchEmbedder(image_size=size, batch_size=4 if tile == "none" else 16,
                         tile_size=None if tile == "none" else int(tile)).fit(None)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
grid = embedder.transform(images)
print(json.dumps({"grid": list(grid.shape), "s": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_mb": base}))
"""


def _child(code, *args):
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--set", default="mvtec_bottle")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--big", type=int, default=2048)
    parser.add_argument("--out", default=str(HERE / "results" / "tiling.json"))
    args = parser.parse_args(argv)
    root = Path(args.data) / args.set
    fits, embeds = [], []
    for size, tile in [(256, "none"), (args.size, "none"), (args.size, args.tile)]:
        row = {"set": args.set, "image_size": size, "tile_size": tile,
               **_child(_FIT, root, size, tile)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        fits.append(row)
        save_json({"fits": fits, "embeds": embeds}, args.out)
    for tile in ("none", args.tile):
        row = {"image_size": args.big, "tile_size": tile, **_child(_EMBED, args.big, tile)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        embeds.append(row)
        save_json({"fits": fits, "embeds": embeds}, args.out)
    print("| image size | tiles | image AUROC | pixel AUROC | AUPRO | fit s | ms/image | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in fits:
        print(f"| {r['image_size']} | {r['tile_size']} | {r['image_auroc']:.3f} | "
              f"{r['pixel_auroc']:.4f} | {r['aupro']:.3f} | {r['fit_s']:.0f} | "
              f"{r['ms_per_image']:.0f} | {r['peak_rss_mb']:.0f} |")
    print("\n| embedding 4 images at | tiles | s | peak RSS MB |")
    print("|---|---|---|---|")
    for r in embeds:
        print(f"| {r['image_size']} px | {r['tile_size']} | {r['s']:.1f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
