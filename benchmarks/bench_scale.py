"""Fit time, inference speed and peak memory of PatchCore and PaDiM at 1x, 4x
and 16x the bottle training set.

The training set is grown by augmentation: each train/good image gives 16
variants at 256 px (the 8 rotations and reflections of the whole image, then
of a 4% centre crop), written once as PNG files to a cache folder. Scale s uses the first s variants of every image, so 1x is 209
images, 4x 836 and 16x 3,344. All scales read 256 px PNGs, so decoding costs
the same per image everywhere.

Every run is a fresh process (its peak RSS, VmHWM, is its own): fit on the
scale's images (time split into embedding, measured around the embedder's
transform calls, and the rest: coreset or statistics, and calibration), then
score bottle's 83 test images (inference ms/image: reading the 512 px PNG,
embedding, scoring) and compute image and pixel AUROC. The table shows the
median of the repeats; JSON keeps every run.

    python benchmarks/bench_scale.py                       # 1x, 4x, 16x; 3 repeats
    python benchmarks/bench_scale.py --scales 1,4 --repeats 1 --methods patchcore
    python benchmarks/bench_scale.py --merge a.json b.json   # one table of both
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, save_json

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = PANEL_DATA / "mvtec_bottle"


def _variants(image):
    """The 16 augmented 256 px variants of one image, in a fixed order: the
    8 rotations and reflections of the whole image, then of a 4% centre crop.

    The framing stays that of the test images (the whole part in view): a
    train-only zoom or shift would be a distribution shift, not more data.
    """
    from PIL import Image

    full = image.convert("RGB")
    side = min(full.size)
    margin = round(0.02 * side)
    cropped = full.crop((margin, margin, full.size[0] - margin, full.size[1] - margin))
    out = []
    for base in (full, cropped):
        base = base.resize((256, 256), Image.BILINEAR)
        for flipped in (base, base.transpose(Image.FLIP_LEFT_RIGHT)):
            out += [flipped.rotate(angle) for angle in (0, 90, 180, 270)]
    return out


def prepare(data, cache):
    """Write the augmented training set once; return its paths by variant."""
    from PIL import Image

    train = sorted((Path(data) / "train" / "good").glob("*.png"))
    if not train:
        raise SystemExit(f"No training images under {data}/train/good")
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    paths = [[cache / f"v{v:02d}_{p.stem}.png" for p in train] for v in range(16)]
    if not all(p.exists() for group in paths for p in group):
        for i, source in enumerate(train):
            for v, variant in enumerate(_variants(Image.open(source))):
                variant.save(paths[v][i])
    return [[str(p) for p in group] for group in paths]


def _child(method, scale, data, cache):
    """One measured run (in its own process); prints one JSON line."""
    from sklearn.metrics import roc_auc_score

    from skanomaly import make_padim, make_patchcore
    from skanomaly.datasets import load_mvtec
    from skanomaly.embedders import PatchEmbedder
    from skanomaly.maps import anomaly_maps
    from skanomaly.metrics import pixel_roc_auc

    groups = prepare(data, cache)
    train = [p for group in groups[:scale] for p in group]
    test = load_mvtec(data, "test")
    embed_seconds = [0.0]
    original = PatchEmbedder.transform

    def timed(self, X):
        start = time.perf_counter()
        try:
            return original(self, X)
        finally:
            embed_seconds[0] += time.perf_counter() - start

    PatchEmbedder.transform = timed
    factory = {"patchcore": make_patchcore, "padim": make_padim}[method]
    pipe = factory(random_state=0)
    start = time.perf_counter()
    pipe.fit(train)
    fit_s = time.perf_counter() - start
    fit_embed_s = embed_seconds[0]
    start = time.perf_counter()
    scores = pipe.decision_function(test.images)
    infer_ms = 1000 * (time.perf_counter() - start) / len(test.images)
    peak_mb = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
    image_auroc = roc_auc_score(test.target, scores)
    pixel_auroc = pixel_roc_auc(test.masks, anomaly_maps(pipe, test.images))
    bank = getattr(pipe[-1], "memory_bank_", None)
    print(json.dumps({
        "method": method, "scale": scale, "n_train": len(train),
        "fit_s": fit_s, "embed_s": fit_embed_s, "head_s": fit_s - fit_embed_s,
        "infer_ms_per_image": infer_ms, "peak_rss_mb": peak_mb,
        "image_auroc": image_auroc, "pixel_auroc": pixel_auroc,
        "bank_size": None if bank is None else len(bank),
    }))


def _report(runs, out):
    """Print the median table of `runs` and save it with every run to `out`."""
    keys = ["n_train", "fit_s", "embed_s", "head_s", "infer_ms_per_image", "peak_rss_mb",
            "image_auroc", "pixel_auroc"]
    table = []
    for method in dict.fromkeys(r["method"] for r in runs):
        for scale in sorted({r["scale"] for r in runs if r["method"] == method}):
            mine = [r for r in runs if r["method"] == method and r["scale"] == scale]
            row = {"method": method, "scale": scale, "repeats": len(mine)}
            row.update({k: float(np.median([r[k] for r in mine])) for k in keys})
            table.append(row)
    header = (f"{'method':<10}{'scale':>6}{'images':>8}{'fit s':>8}{'embed s':>9}{'head s':>8}"
              f"{'ms/img':>8}{'peak MB':>9}{'img AUROC':>10}{'px AUROC':>10}")
    print(header)
    for r in table:
        print(f"{r['method']:<10}{r['scale']:>5}x{r['n_train']:>8.0f}{r['fit_s']:>8.1f}"
              f"{r['embed_s']:>9.1f}{r['head_s']:>8.1f}{r['infer_ms_per_image']:>8.0f}"
              f"{r['peak_rss_mb']:>9.0f}{r['image_auroc']:>10.4f}{r['pixel_auroc']:>10.4f}")
    save_json({"median": table, "runs": runs}, out)
    print(f"saved {out}", file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--cache", default="/tmp/skanomaly_bench_bottle_d4")
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--methods", default="patchcore,padim")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "SCALE"), help=argparse.SUPPRESS)
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="tabulate the runs of earlier result files instead of running")
    args = parser.parse_args(argv)
    if args.merge:
        _report([r for f in args.merge for r in json.loads(Path(f).read_text())["runs"]], args.out)
        return
    if args.child:
        _child(args.child[0], int(args.child[1]), args.data, args.cache)
        return
    prepare(args.data, args.cache)
    runs = []
    for method in args.methods.split(","):
        for scale in map(int, args.scales.split(",")):
            for repeat in range(args.repeats):
                out = subprocess.run(
                    [sys.executable, __file__, "--data", args.data, "--cache", args.cache,
                     "--child", method, str(scale)],
                    capture_output=True, text=True, check=True,
                )
                run = json.loads(out.stdout.strip().splitlines()[-1])
                runs.append(run)
                # Kept as it grows: a stopped sweep leaves its finished runs.
                save_json({"median": None, "runs": runs}, args.out)
                print(f"  {method} {scale}x run {repeat + 1}: fit {run['fit_s']:.1f} s, "
                      f"{run['infer_ms_per_image']:.0f} ms/img, {run['peak_rss_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
    _report(runs, args.out)


if __name__ == "__main__":
    main()
