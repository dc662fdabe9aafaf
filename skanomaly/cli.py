"""Command line: ``skanomaly demo`` (also ``python -m skanomaly demo``)."""

import argparse
import sys
import time

import numpy as np

DEMO_HELP = """\
Fit PatchCore on normal images and report how well it finds defects.

Without --data it runs on the built-in synthetic dataset (no download):
woven textures, with scratches, holes and stains on the test images.
With --data it runs on a folder in MVTec AD layout (train/good, test/<type>,
ground_truth/<type>/<stem>_mask.png).

examples:
  skanomaly demo
  skanomaly demo --data ../shared/data/mvtec_bottle
"""


def _synthetic_split(image_size, seed):
    from .datasets import make_synthetic

    data = make_synthetic(60, 30, image_size=image_size, random_state=seed)
    n_train = 40
    train = data.images[:n_train]
    test_idx = np.arange(n_train, len(data.target))
    return (
        train,
        data.images[test_idx],
        data.target[test_idx],
        list(data.masks[test_idx]),
        "synthetic textures (40 train, 20 good + 30 defective test)",
    )


def _folder_split(root):
    from .datasets import load_mvtec

    train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
    description = (
        f"{root} ({len(train.images)} train, {int((test.target == 1).sum())} good + "
        f"{int((test.target == -1).sum())} defective test)"
    )
    return train.images, test.images, test.target, test.masks, description


def _demo(args):
    from sklearn.metrics import roc_auc_score

    from .maps import anomaly_maps
    from .metrics import pixel_roc_auc
    from .pipelines import make_patchcore

    if args.data:
        train, test, target, masks, description = _folder_split(args.data)
        image_size = args.image_size or 256
    else:
        image_size = args.image_size or 128
        train, test, target, masks, description = _synthetic_split(image_size, args.seed)
    print(f"data: {description}")
    pipe = make_patchcore(
        image_size=image_size, contamination=0.1, random_state=args.seed, verbose=1,
    )
    # Ten held-out normal images are enough to honour a 10% false-alarm rate.
    pipe.set_params(knndetector__calibration_size=10)
    start = time.perf_counter()
    pipe.fit(train)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = pipe.decision_function(test)
    ms_per_image = 1000 * (time.perf_counter() - start) / len(test)
    labels = pipe.predict(test)
    maps = anomaly_maps(pipe, test)
    rows = [
        ("image AUROC", f"{roc_auc_score(target, scores):.4f}"),
        ("pixel AUROC", f"{pixel_roc_auc(masks, maps):.4f}"),
        ("defects flagged", f"{int((labels[target == -1] == -1).sum())}/{int((target == -1).sum())}"),
        ("good flagged", f"{int((labels[target == 1] == -1).sum())}/{int((target == 1).sum())}"),
        ("fit seconds", f"{fit_s:.1f}"),
        ("ms / image", f"{ms_per_image:.1f}"),
        ("memory bank", f"{pipe[-1].memory_bank_.shape[0]} x {pipe[-1].memory_bank_.shape[1]}"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nPatchCore (EfficientNet-Lite0)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="skanomaly",
        description="Visual anomaly detection with scikit-learn estimators.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="fit PatchCore and print its accuracy", description=DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--data", metavar="DIR", help="MVTec-layout category folder")
    demo.add_argument("--image-size", type=int, default=None,
                      help="backbone input size (default 128 synthetic, 256 --data)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv=None):
    """Entry point of the ``skanomaly`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as exc:
        # User mistakes (bad folder, unreadable image): one line, no traceback.
        print(f"skanomaly {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
