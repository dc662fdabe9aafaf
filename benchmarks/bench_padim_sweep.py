"""PaDiM's regularization and image-score smoothing, swept over the panel.

For each shared set, seed (the random channel subset and calibration split)
and regularization rule, ``make_padim`` is fitted once from image paths; the
image AUROC is then computed for several ``image_score_sigma`` values from
the same patch scores (the smoothing only changes how patch scores become
the image score), and the pixel AUROC of the anomaly maps where the set has
masks. This is how make_padim's defaults were chosen: by the mean and the
worst set over the panel, averaged over seeds.

    python benchmarks/bench_padim_sweep.py [--sets ...] [--seeds 0,1]
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, SETS, save_json

HERE = Path(__file__).resolve().parent
RULES = ((0.01, "absolute"), (0.1, "global"), (0.3, "global"), (1.0, "global"))
SIGMAS = (0.0, 0.5, 1.0, 2.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default=str(HERE / "results" / "padim_sweep.json"))
    args = parser.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    from skanomaly import make_padim
    from skanomaly.datasets import load_mvtec
    from skanomaly.detectors._base import _smoothed_max
    from skanomaly.evaluation import FeatureCache, _image_shapes
    from skanomaly.maps import upsample_patch_scores
    from skanomaly.metrics import pixel_roc_auc

    rows = []
    for name in args.sets.split(","):
        root = Path(args.data) / name
        train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
        has_masks = any(m is not None for m in test.masks)
        shapes = _image_shapes(test.images) if has_masks else None
        cache = FeatureCache()
        for seed in map(int, args.seeds.split(",")):
            for reg, scale in RULES:
                pipe = make_padim(random_state=seed, regularization=reg,
                                  regularization_scale=scale)
                pipe[:-1].fit(None)
                pipe[-1].fit(cache.transform(pipe[:-1], train.images))
                patches = pipe[-1].score_patches(cache.transform(pipe[:-1], test.images))
                row = {"set": name, "seed": seed, "reg": reg, "scale": scale}
                for sigma in SIGMAS:
                    row[f"s{sigma:g}"] = roc_auc_score(test.target == -1,
                                                       _smoothed_max(patches, sigma))
                if has_masks:
                    maps = upsample_patch_scores(patches, shapes,
                                                 model_shape=pipe[0].image_shape_)
                    row["pixel"] = pixel_roc_auc(test.masks, maps)
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
                save_json({"command": " ".join(sys.argv), "rows": rows}, args.out)
    summarise(rows)


def summarise(rows):
    """Markdown: per rule and sigma, the seed-averaged AUROC per set, mean, worst."""
    sets = [s for s in SETS if any(r["set"] == s for r in rows)]
    print("| rule | sigma | " + " | ".join(sets) + " | mean | worst | pixel (tire) |")
    print("|---|---|" + "---|" * (len(sets) + 3))
    for reg, scale in RULES:
        for sigma in SIGMAS:
            key = f"s{sigma:g}"
            per_set = [np.mean([r[key] for r in rows if r["set"] == s and r["reg"] == reg
                                and r["scale"] == scale]) for s in sets]
            pixel = [r["pixel"] for r in rows if r["set"] == "mvtec3d_tire"
                     and r["reg"] == reg and r["scale"] == scale]
            print(f"| {reg:g} {scale} | {sigma:g} | " + " | ".join(f"{v:.3f}" for v in per_set)
                  + f" | {np.mean(per_set):.3f} | {min(per_set):.3f} | "
                  + (f"{np.mean(pixel):.3f}" if pixel else "-") + " |")


if __name__ == "__main__":
    main()
