"""CFlow with one flow per backbone stage (the paper's structure), on the panel.

``make_cflow`` models the concatenated stride 8 and stride 16 features of
its ``PatchEmbedder`` with one flow. This fits ``make_cflow``'s embedder
once per set, then one ``FlowDetector`` (``make_cflow``'s head, cloned) on
each stage's features (Lite0: the first 40 channels are stride 8, the other
112 stride 16 upsampled), and reports image / pixel AUROC of each stage
alone and of the stage maps combined: summed NLL, anomalib's sum of
exp-normalised per-dimension likelihoods, and summed per-dimension NLL.
Image scores are the raw maximum and the maximum after a one-cell blur.
With ``--joint`` it also fits ``make_cflow``'s own head on all the channels
and reports the joint flow's image score with each stage's map, and the
joint map summed with the first stage's, as NLL and per dimension (the
map ``make_cflow`` draws). Every NLL grid is saved beside the
JSON (``.npz``) so that further combinations need no refit.

    python benchmarks/bench_cflow_stages.py [--sets ...] [--aggregation-size 1] [--joint]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, SETS, panel_sets, save_json

HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--aggregation-size", type=int, default=1)
    parser.add_argument("--split", type=int, default=40, help="channels of the first stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--joint", action="store_true",
                        help="also fit the head on all channels (make_cflow's model)")
    parser.add_argument("--out", default=str(HERE / "results" / "cflow_stages.json"))
    args = parser.parse_args(argv)

    from PIL import Image
    from scipy.ndimage import gaussian_filter
    from sklearn.base import clone
    from sklearn.metrics import roc_auc_score

    from skanomaly import make_cflow
    from skanomaly.datasets import load_mvtec
    from skanomaly.maps import upsample_patch_scores
    from skanomaly.metrics import pixel_roc_auc

    rows = []
    for name, root in panel_sets(args.data, args.sets):
        train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
        pipe = make_cflow(random_state=args.seed)
        pipe.set_params(patchembedder__aggregation_size=args.aggregation_size)
        embedder, head = pipe[:-1], pipe.steps[-1][1]
        train_x, test_x = embedder.fit_transform(train.images), embedder.transform(test.images)
        anomalous = test.target == -1
        has_masks = any(m is not None for m in test.masks)
        shapes = [Image.open(p).size[::-1] for p in test.images]
        model_shape = pipe[0].image_shape_

        def scores(patch, tag, map_patch=None):
            row = {"set": name, "variant": tag, "seed": args.seed,
                   "aggregation_size": args.aggregation_size,
                   "image_raw": roc_auc_score(anomalous, patch.max(axis=(1, 2))),
                   "image_blur1": roc_auc_score(
                       anomalous, [gaussian_filter(m, 1.0).max() for m in patch])}
            if has_masks:
                maps = upsample_patch_scores(patch if map_patch is None else map_patch,
                                             shapes, model_shape=model_shape)
                row["pixel"] = pixel_roc_auc(test.masks, maps)
            print(row, file=sys.stderr, flush=True)
            rows.append(row)

        stages, nll = [(0, args.split), (args.split, train_x.shape[-1])], []
        if args.joint:
            stages.insert(0, (0, train_x.shape[-1]))
        for first, last in stages:
            start = time.perf_counter()
            flow = clone(head).fit(train_x[..., first:last])
            print(f"{name} stage {first}:{last} fit {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
            nll.append(flow.score_patches(test_x[..., first:last]))
            scores(nll[-1], f"stage {first}:{last} alone")
        grids = {f"{first}:{last}": n for n, (first, last) in zip(nll, stages)}
        np.savez(Path(args.out).with_name(f"{Path(args.out).stem}_{name}.npz"),
                 anomalous=anomalous, **grids)
        if args.joint:
            joint, nll, stages = nll[0], nll[1:], stages[1:]
            for n, (first, last) in zip(nll, stages):
                scores(joint, f"joint image, stage {first}:{last} map", map_patch=n)
            scores(joint, "joint image, joint + first stage summed map",
                   map_patch=joint + nll[0])
            # make_cflow's map (map_stage=0): each flow's NLL per dimension.
            (first, last), n_joint = stages[0], train_x.shape[-1]
            scores(joint, "joint image, per-dimension sum of joint and first stage map",
                   map_patch=joint / n_joint + nll[0] / (last - first))
        scores(nll[0] + nll[1], "summed NLL")
        per_dim = [-n / (last - first) for n, (first, last) in zip(nll, stages)]
        likelihood = sum(np.exp(ll - ll.max()) for ll in per_dim)
        scores(likelihood.max() - likelihood, "anomalib exp-normalised sum")
        scores(-(per_dim[0] + per_dim[1]), "summed per-dimension NLL")
        save_json({"command": " ".join(sys.argv), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
