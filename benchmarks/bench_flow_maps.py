"""How a flow head's maps combine: FastFlow and CFlow with a map stage.

For each set with masks, each method and each ``--map-stages`` value, the
factory with its defaults and that ``map_stage`` is fitted through
``evaluate_pipeline`` (its own image and pixel figures are printed), then
pixel AUROC and AUPRO are computed, at ``anomaly_maps``' default blur, for
maps drawn from the test images' patch scores of each flow, its NLL or
half its latent's squared norm (``map_score="latent"``, without the
log-determinant): each flow's alone (the joint one resized to the grid),
the two NLLs per dimension summed, one minus the mean of the two flows'
likelihoods per dimension (``exp(-score / d)``) for each pair of kinds, and
the head's own map. Each combination is drawn from the same two fitted flows. The score
grids are saved beside the JSON (``.npz``).

FastFlow's taps are strides 4, 8 and 16: map stage 0 is the stride-4 stage
(its default), 1 the stride-8 one; CFlow's are 8 and 16.

    python benchmarks/bench_flow_maps.py --methods fastflow,cflow \\
        --sets mvtec_bottle,mvtec3d_tire,kolektorsdd [--map-stages 0,1] [--seed 0]
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, panel_sets, save_json

HERE = Path(__file__).resolve().parent
MASKED_SETS = "mvtec_bottle,mvtec3d_tire,kolektorsdd"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--sets", default=MASKED_SETS)
    parser.add_argument("--methods", default="fastflow,cflow")
    parser.add_argument("--map-stages", default="0", help="comma-separated map_stage values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=None, help="smoke tests only")
    parser.add_argument("--out", default=str(HERE / "results" / "flow_maps.json"))
    args = parser.parse_args(argv)

    import skanomaly
    from skanomaly.datasets import load_mvtec
    from skanomaly.detectors._flow import _resized
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
            for map_stage in [int(s) for s in args.map_stages.split(",")]:
                factory = getattr(skanomaly, f"make_{method}")
                pipe = factory(random_state=args.seed, map_stage=map_stage,
                               max_epochs=args.max_epochs)
                result = evaluate_pipeline(pipe, train.images, test.images, test.target,
                                           test.masks)
                head = pipe[-1]
                features = pipe[:-1].transform(test.images)
                start, stop = head.map_channels_
                # Each flow's NLL and half its latent's squared norm per
                # patch; the joint flow's resized to the grid as the head does.
                joint = np.stack([_resized(part, features.shape[1:3])
                                  for part in head._patch_scores(features).swapaxes(0, 1)], 1)
                stage = head.map_flow_._patch_scores(features[..., start:stop])
                dims = {"joint": head._joint_dimension(), "stage": stop - start}
                np.savez(Path(args.out).with_name(
                    f"{Path(args.out).stem}_{method}_{name}_stage{map_stage}.npz"),
                    joint=joint, stage=stage)

                def upsampled(patch):
                    return upsample_patch_scores(patch.astype(np.float32), shapes,
                                                 model_shape=pipe[0].image_shape_)

                kinds = ("NLL", "latent")
                maps = {}
                for part, kind in enumerate(kinds):
                    maps[f"joint {kind} alone"] = upsampled(joint[:, part])
                    maps[f"stage {kind} alone"] = upsampled(stage[:, part])
                maps["NLL per dimension summed"] = upsampled(
                    joint[:, 0] / dims["joint"] + stage[:, 0] / dims["stage"])
                for j, joint_kind in enumerate(kinds):
                    for g, stage_kind in enumerate(kinds):
                        likelihoods = (np.exp(-joint[:, j] / dims["joint"])
                                       + np.exp(-stage[:, g] / dims["stage"]))
                        maps[f"likelihoods averaged: joint {joint_kind} + stage {stage_kind}"] = (
                            upsampled(1 - likelihoods / 2))
                maps[f"the head's map (map_score={head.map_score!r})"] = upsampled(
                    head.score_patches(features))
                for variant, drawn in maps.items():
                    row = {"set": name, "method": method, "seed": args.seed,
                           "map_stage": map_stage, "map": variant,
                           "image_auroc": result["image_auroc"],
                           "pixel_auroc": pixel_roc_auc(test.masks, drawn),
                           "aupro": pixel_aupro(test.masks, drawn), "fit_s": result["fit_s"]}
                    print(row, file=sys.stderr, flush=True)
                    rows.append(row)
                save_json({"command": " ".join(sys.argv), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
