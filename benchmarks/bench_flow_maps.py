"""How a flow head's maps combine: FastFlow and CFlow with a map stage.

For each set with masks, each method and each ``--map-stages`` value, the
factory with its defaults and that ``map_stage`` is fitted through
``evaluate_pipeline`` (its own image and pixel figures are printed), then
pixel AUROC and AUPRO are computed, at ``anomaly_maps``' default blur, for
maps drawn from the test images' patch scores: the joint flow's alone
(resized to the grid), the stage flow's alone, their NLL per dimension
summed, and the head's own map (one minus the mean of their likelihoods per
dimension, ``exp(-NLL / d)``). Each combination is drawn from the same two
fitted flows. The NLL grids are saved beside the JSON (``.npz``).

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
                # The joint flow's map alone, as the head resizes it to the grid.
                joint = _resized(head._patch_scores(features), features.shape[1:3])
                stage = head.map_flow_.score_patches(features[..., start:stop])
                dims = {"joint": head._joint_dimension(), "stage": stop - start}
                np.savez(Path(args.out).with_name(
                    f"{Path(args.out).stem}_{method}_{name}_stage{map_stage}.npz"),
                    joint=joint, stage=stage)

                def upsampled(patch):
                    return upsample_patch_scores(patch.astype(np.float32), shapes,
                                                 model_shape=pipe[0].image_shape_)

                maps = {"joint alone": upsampled(joint), "stage alone": upsampled(stage),
                        "NLL per dimension summed": upsampled(joint / dims["joint"]
                                                              + stage / dims["stage"]),
                        "likelihoods averaged (the head's map)":
                            upsampled(head.score_patches(features))}
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
