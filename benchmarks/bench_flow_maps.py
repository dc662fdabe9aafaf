"""How a flow head's two maps combine: FastFlow and CFlow with ``map_stage=0``.

For each set with masks and each method, the factory with its defaults (and
``map_stage=0``) is fitted through ``evaluate_pipeline`` (its own figures
are printed), then the test images' patch NLL grids of the joint flow and
of the stride-8 stage's flow are kept, and pixel AUROC and AUPRO are
computed for maps drawn from them at ``anomaly_maps``' default blur: each
flow alone, their NLL per dimension summed, and the head's own map (one
minus the mean of their likelihoods per dimension, ``exp(-NLL / d)``).
Combinations are affine in the upsampled maps, so each is the map a head
drawing it would draw.

With ``--stride4`` a third flow (the factory's head, cloned) is fitted on
the backbone's stride-4 stage alone (``patchembedder__layers=(4,)``: a
64 x 64 grid) and averaged in likelihood with the joint flow's map, and with
both others'. The NLL grids are saved beside the JSON (``.npz``).

    python benchmarks/bench_flow_maps.py --methods fastflow,cflow \\
        --sets mvtec_bottle,mvtec3d_tire,kolektorsdd [--stride4] [--seed 0]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, panel_sets, save_json

HERE = Path(__file__).resolve().parent
MASKED_SETS = "mvtec_bottle,mvtec3d_tire,kolektorsdd"


def _likelihood(nll, dim):
    return np.exp(-nll / dim)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--sets", default=MASKED_SETS)
    parser.add_argument("--methods", default="fastflow,cflow")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stride4", action="store_true",
                        help="also fit a flow on the stride-4 stage alone")
    parser.add_argument("--max-epochs", type=int, default=None, help="smoke tests only")
    parser.add_argument("--out", default=str(HERE / "results" / "flow_maps.json"))
    args = parser.parse_args(argv)

    import skanomaly
    from skanomaly.datasets import load_mvtec
    from skanomaly.evaluation import _image_shapes, evaluate_pipeline
    from skanomaly.maps import upsample_patch_scores
    from skanomaly.metrics import pixel_aupro, pixel_roc_auc

    rows = []
    for name, root in panel_sets(args.data, args.sets):
        train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
        if all(mask is None for mask in test.masks):
            print(f"{name}: no masks, skipped", file=sys.stderr)
            continue
        shapes = _image_shapes(test.images)
        for method in args.methods.split(","):
            factory = getattr(skanomaly, f"make_{method}")
            pipe = factory(random_state=args.seed, map_stage=0, max_epochs=args.max_epochs)
            result = evaluate_pipeline(pipe, train.images, test.images, test.target, test.masks)
            head = pipe[-1]
            features = pipe[:-1].transform(test.images)
            start, stop = head.map_channels_
            joint = head._patch_scores(features)
            stage = head.map_flow_.score_patches(features[..., start:stop])
            dims = {"joint": features.shape[-1], "stage": stop - start}
            grids = {"joint": joint, "stage": stage}
            if args.stride4:
                fine = factory(random_state=args.seed, map_stage=None, max_epochs=args.max_epochs)
                fine.set_params(patchembedder__layers=(4,))
                began = time.perf_counter()
                fine.fit(train.images)
                fine_features = fine[:-1].transform(test.images)
                print(f"{name} {method} stride-4 flow: {time.perf_counter() - began:.0f} s",
                      file=sys.stderr, flush=True)
                grids["stride4"] = fine[-1].score_patches(fine_features)
                dims["stride4"] = fine_features.shape[-1]
            np.savez(Path(args.out).with_name(f"{Path(args.out).stem}_{method}_{name}.npz"),
                     **grids)

            def upsampled(patch):
                return upsample_patch_scores(patch.astype(np.float32), shapes,
                                             model_shape=pipe[0].image_shape_)

            maps = {"joint alone": upsampled(joint), "stage alone": upsampled(stage),
                    "NLL per dimension summed": upsampled(joint / dims["joint"]
                                                          + stage / dims["stage"])}
            # The head's own map (map_stage=0): likelihoods of joint + stage averaged.
            maps["likelihoods averaged: joint + stage"] = upsampled(head.score_patches(features))
            if args.stride4:
                maps["stride-4 alone"] = upsampled(grids["stride4"])
                # Each upsampled on its own: the grids differ (stride 4 or 8).
                likelihood = {k: upsampled(_likelihood(g, dims[k])) for k, g in grids.items()}
                for combo in [("joint", "stride4"), ("joint", "stage", "stride4")]:
                    maps["likelihoods averaged: " + " + ".join(combo)] = [
                        1 - sum(parts) / len(combo)
                        for parts in zip(*(likelihood[k] for k in combo))]
            for variant, drawn in maps.items():
                row = {"set": name, "method": method, "seed": args.seed, "map": variant,
                       "image_auroc": result["image_auroc"],
                       "pixel_auroc": pixel_roc_auc(test.masks, drawn),
                       "aupro": pixel_aupro(test.masks, drawn)}
                print(row, file=sys.stderr, flush=True)
                rows.append(row)
            save_json({"command": " ".join(sys.argv), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
