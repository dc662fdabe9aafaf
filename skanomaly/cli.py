"""Command line: ``skanomaly demo|evaluate|fit|predict|serve|export|from-anomalib`` (also ``python -m skanomaly``)."""

import argparse
import csv
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from .report import _METRIC_COLUMNS

CALIBRATE_HELP = """\
Set a saved model's image threshold from recent good images (and report the
recall on defective ones): the threshold that flags at most
--false-alarm-rate of good images (on average, or with --confidence), and
the most defects any such threshold flags. The good images also set the pixel threshold (masks
and boxes). Use it when production images drift from the training images.
The good images join the model's own calibration scores unless a rank test
says the two differ (e.g. a drift: then they replace them); --no-pool
always uses the good images alone.

examples:
  skanomaly calibrate model.skops --good recent/good --defective recent/bad \\
      --false-alarm-rate 0.02 -o model_line2.skops
"""

EVALUATE_HELP = """\
Fit methods on a folder in MVTec AD layout and measure them on its test split.

Prints one table (image AUROC, pixel AUROC, AUPRO, F1-max; at the model's
own thresholds, the share of good images flagged, of defects flagged, the
most a threshold with that false-alarm rate catches, pixel F1 and the share
of good images with a box; fit seconds, ms per image, peak RSS) and writes it as CSV and JSON, with an HTML report
comparing the methods (ROC and PRO curves, score histograms with the
threshold, AUROC per defect type, the hardest images with their maps). Methods that share an
embedder share its features, so several methods cost little more than one.
"fit s" is embedding the training images plus fitting the head; the peak RSS
is the process's peak so far, after each method.

examples:
  skanomaly evaluate ../shared/data/mvtec_bottle
  skanomaly evaluate ../shared/data/mvtec_bottle --methods patchcore,padim,dfm
  skanomaly evaluate ../shared/data/mvtec_bottle --methods fastflow,stfpm
  skanomaly evaluate ../shared/data/mvtec3d_tire --methods all --out results/tire
  skanomaly evaluate ../shared/data/mvtec_bottle --model patchcore.joblib

With --synthetic, no defective image is needed: a random 20% of the normal
training images (DIR/train/good, or DIR itself when it is a plain folder of
good images) is held out, and the methods are judged on those images and on
copies of them with painted defects (cut-paste, scratch, blob, each at
full strength and at half and a quarter of it; see skanomaly.defects).
That ranks methods for a new product from good parts
alone:
  skanomaly evaluate my_product/good --synthetic --methods patchcore,padim,dfm
"""

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
    from sklearn.utils import Bunch

    from .datasets import make_synthetic

    data = make_synthetic(60, 30, image_size=image_size, random_state=seed)
    n_train = 40
    test_idx = np.arange(n_train, len(data.target))
    test = Bunch(images=data.images[test_idx], target=data.target[test_idx],
                 masks=list(data.masks[test_idx]),
                 defect_type=[data.defect_type[i] for i in test_idx])
    return data.images[:n_train], test, "synthetic textures (40 train, 20 good + 30 defective test)"


def _folder_split(root):
    from .datasets import load_mvtec

    train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
    description = (
        f"{root} ({len(train.images)} train, {int((test.target == 1).sum())} good + "
        f"{int((test.target == -1).sum())} defective test)"
    )
    return train.images, test, description


def _demo(args):
    from sklearn.metrics import roc_auc_score

    from .maps import anomaly_maps
    from .metrics import f1_max, pixel_aupro, pixel_roc_auc
    from .pipelines import make_patchcore
    from .report import summarize_result, write_report

    if args.data:
        train, test, description = _folder_split(args.data)
        image_size = args.image_size or 256
    else:
        image_size = args.image_size or 128
        train, test, description = _synthetic_split(image_size, args.seed)
    target = test.target
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
    maps, scores = anomaly_maps(pipe, test.images, return_scores=True)
    ms_per_image = 1000 * (time.perf_counter() - start) / len(test.images)
    decision = scores - pipe[-1].offset_
    labels = np.where(decision >= 0, 1, -1)  # predict's rule, without embedding again
    result = {"scores": decision, "maps": maps, "fit_s": fit_s, "ms_per_image": ms_per_image,
              "image_auroc": roc_auc_score(target, decision),
              "f1_max": f1_max(target, decision)[0],
              "pixel_auroc": pixel_roc_auc(test.masks, maps), "aupro": pixel_aupro(test.masks, maps)}
    rows = [
        ("image AUROC", f"{result['image_auroc']:.4f}"),
        ("pixel AUROC", f"{result['pixel_auroc']:.4f}"),
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
    summary = summarize_result("PatchCore (EfficientNet-Lite0)", result, test.images, target,
                               test.masks, test.defect_type)
    report = write_report(Path(args.out) / "report.html", [summary],
                          title="skanomaly demo report", description=description)
    print(f"\nreport: {report}")
    return 0


FIT_HELP = """\
Fit a method on normal images and save the pipeline: as skops for an
-o NAME.skops (a file that loads without running code; needs skops), else
with joblib (loading it runs code from it: share only with people who trust
you).

TRAIN is a folder of normal images, or a category folder in MVTec AD layout
(its train/good is used).

examples:
  skanomaly fit --train ../shared/data/mvtec_bottle -o bottle.skops
  skanomaly fit --train ../shared/data/mvtec_bottle -o bottle.joblib
  skanomaly fit --method padim --train parts/good -o padim.joblib --contamination 0.01
"""

EXPORT_HELP = """\
Export a saved pipeline to one ONNX file (graph + metadata, no pickle), for
inference without torch (skanomaly_runtime, onnxruntime or OpenVINO) with the
pipeline's scores. Methods that cannot be exported say why.

examples:
  skanomaly export bottle.joblib -o bottle.onnx
  skanomaly predict bottle.onnx ../shared/data/mvtec_bottle/test/broken_large --out found
"""

PREDICT_HELP = """\
Score images with a saved pipeline (a .joblib file from 'skanomaly fit', or a
.onnx file from 'skanomaly export') and write what it found to --out:

  predictions.csv   image, score (higher = more normal), p_value, label
                    (+1 normal, -1 anomalous), error (why an image was skipped)
  masks/*.png       binary defect masks (patch-level methods)
  overlays/*.png    anomaly heatmap over the image, mask outline in green
                    (one colour scale: the pixel threshold at its middle)
  boxes.json        bounding boxes of anomalous regions with a score each

Images are scored and written 16 at a time, so memory stays flat over any
folder. A file that cannot be read is named on stderr and in the error
column, the others are scored, and the exit status is 1. Every file written
is complete: rows are flushed whole, images and boxes.json are renamed into
place, so an interrupted run leaves valid results for the images it reached.

examples:
  skanomaly predict bottle.joblib ../shared/data/mvtec_bottle/test/broken_large --out found
  skanomaly predict bottle.joblib a.png b.png --out found

A .joblib file runs code when it loads: use only files you trust. A .onnx
export loads no code.
"""


SERVE_HELP = """\
Open a fitted model in a local web app: drop images (or give files and
folders here) and see each one's score, p-value, label, heatmap, mask and
boxes in a sortable table. The image and pixel thresholds, as a
false-alarm rate or a raw value, relabel images and redraw masks live in
the page, without scoring again; the table exports as CSV. "Save
thresholds to model" writes the model with the thresholds the sliders show
to --save-to (default: MODEL's name with "-thresholds", beside it); the
MODEL file itself is never overwritten.

It binds to 127.0.0.1 (this machine only) unless --host says otherwise, and
serves no file from disk: only the page and the results of the images given
or dropped.

examples:
  skanomaly serve bottle.joblib ../shared/data/mvtec_bottle/test
  skanomaly serve bottle.skops --port 9000
"""


def _serve(args):
    from .serve import make_server

    if Path(args.model).suffix.lower() == ".onnx":
        raise ValueError("serve needs the fitted pipeline (.joblib or .skops from 'skanomaly fit'), "
                         "not an ONNX export.")
    pipe = _load_pipeline(args.model)
    model = Path(args.model)
    save_to = Path(args.save_to) if args.save_to else model.with_name(f"{model.stem}-thresholds{model.suffix}")
    if save_to.resolve() == model.resolve():
        raise ValueError(f"--save-to {args.save_to} is the model being served; choose another file.")
    try:
        server = make_server(pipe, args.images, host=args.host, port=args.port, save_to=save_to)
    except OSError as exc:  # port taken, address not local
        raise ValueError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}).") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"skanomaly serve: warning: listening on {args.host}: other machines that can "
              "reach it see the results and can score images.", file=sys.stderr)
    print(f"serving {args.model} at {server.url} (Ctrl-C stops); "
          f"'Save thresholds to model' writes {save_to}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


FROM_ANOMALIB_HELP = """\
Turn an anomalib 2.x PatchCore or PaDiM checkpoint (.ckpt) into a skanomaly model
file, without anomalib and without running code from the checkpoint. Its
scores are anomalib's raw image scores (negated: higher = more normal); the
threshold is set on --calibration, normal images that were not in the
checkpoint's training set. The model then works with every command:
predict, serve, export (ONNX, no torch on the line PC), evaluate --model.

examples:
  skanomaly from-anomalib results/Patchcore/bottle/v0/weights/lightning/model.ckpt \\
      --calibration held_out_good/ -o bottle.skops
  skanomaly export bottle.skops -o bottle.onnx
"""


def _from_anomalib(args):
    from .anomalib_import import load_anomalib_checkpoint
    from .persistence import save_model

    calibration = _training_images(args.calibration)
    pipe = load_anomalib_checkpoint(args.checkpoint, calibration, contamination=args.contamination)
    out = save_model(pipe, args.output)
    head = pipe.steps[-1][1]
    if hasattr(head, "memory_bank_"):
        model = f"PatchCore, bank {head.memory_bank_.shape[0]} x {head.memory_bank_.shape[1]}"
    else:
        h, w, d = head.mean_.shape
        model = f"PaDiM, {h} x {w} Gaussians of {d} features"
    print(f"{args.checkpoint}: {pipe.steps[0][1].backbone}, {model}, threshold from "
          f"{len(calibration)} images -> {out}")
    return 0


def _training_images(folder):
    from .datasets import load_folder, load_mvtec

    root = Path(folder)
    if (root / "train" / "good").is_dir():
        return load_mvtec(root, "train").images
    return load_folder(root).images


def _fit(args):
    from .persistence import save_model
    from .registry import get_method

    factory = get_method(args.method).factory
    images = _training_images(args.train)
    kwargs = {"random_state": args.seed, "verbose": 1, "contamination": args.contamination}
    if args.image_size:
        kwargs["image_size"] = args.image_size
    pipe = factory(**kwargs)
    start = time.perf_counter()
    pipe.fit(images)
    out = save_model(pipe, args.output)  # never leaves a half-written model behind
    print(f"fitted {args.method} on {len(images)} images in "
          f"{time.perf_counter() - start:.1f} s -> {out}")
    return 0


def _calibrate(args):
    from .calibration import calibrate
    from .datasets import load_folder
    from .persistence import save_model

    pipe = _load_pipeline(args.model)
    good = load_folder(args.good).images
    defective = load_folder(args.defective).images if args.defective else None
    summary = calibrate(pipe, good, defective, false_alarm_rate=args.false_alarm_rate,
                        confidence=args.confidence, pool=False if args.no_pool else "auto")
    out = save_model(pipe, args.output)
    promise = ("on average" if summary["confidence"] is None
               else f"with confidence {summary['confidence']:g}")
    joined = ("with the model's calibration (no drift found)" if summary["pooled"]
              else "alone" + (" (they score unlike the training images: a drift?)"
                              if summary["drift_p_value"] == summary["drift_p_value"] else ""))
    line = (f"threshold from {summary['n_good']} good images {joined}: flags "
            f"{summary['good_flagged']} of them; false-alarm rate <= "
            f"{summary['false_alarm_rate']:g} {promise}")
    if "recall" in summary:
        line += f"; flags {summary['recall']:.0%} of {len(defective)} defective images"
    print(f"{line} -> {out}")
    return 0


def _load_pipeline(path):
    """A fitted skanomaly pipeline from a .joblib or .skops file, or one clear error."""
    from .persistence import load_model

    pipe = load_model(path)
    head = pipe.steps[-1][1] if hasattr(pipe, "steps") else None
    if head is None or not hasattr(head, "offset_"):
        raise ValueError(f"{path!r} holds a {type(pipe).__name__}, not a fitted skanomaly pipeline.")
    return pipe


def _export(args):
    from .export import to_onnx

    path = to_onnx(_load_pipeline(args.model), args.output)
    print(f"{args.model} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _load_model(path):
    """``(scores_and_maps, pvalues_of, offset, pixel_threshold, contamination)`` of a saved
    model: a joblib pipeline, or an ONNX export run by skanomaly_runtime."""
    model = Path(path)  # each loader below names a missing file
    if model.suffix.lower() == ".onnx":
        import skanomaly_runtime

        exported = skanomaly_runtime.load(model)

        def scores_and_maps(paths):
            if not exported.metadata_["maps"]:
                return None, exported.score_samples(paths)
            return exported.anomaly_maps(paths, return_scores=True)

        return (scores_and_maps, lambda scores: exported.conformal_pvalues(scores=scores),
                exported.offset_, exported.metadata_.get("pixel_threshold"),
                exported.metadata_.get("contamination"))
    from .calibration import _pvalues_of_scores, pixel_threshold
    from .maps import _draws_maps, _NoMapsError, anomaly_maps

    pipe = _load_pipeline(model)
    head = pipe.steps[-1][1]

    def scores_and_maps(paths):
        try:
            return anomaly_maps(pipe, paths, return_scores=True)
        except _NoMapsError:  # an image-level method (DFKDE, GANomaly, ...)
            return None, pipe.score_samples(paths)

    return (scores_and_maps, lambda scores: _pvalues_of_scores(head, scores), head.offset_,
            pixel_threshold(pipe) if _draws_maps(head) else None, head.contamination)


def _predict(args):
    from skanomaly_runtime._output import predict_to_folder
    from skanomaly_runtime.images import image_files

    from .plotting import overlay_heatmap

    scores_and_maps, pvalues_of, offset, threshold, contamination = _load_model(args.model)
    paths = image_files(args.images)

    def overlay(image, amap, mask):
        # One colour scale for every image and batch: the pixel threshold at
        # its middle, so that overlays compare across a folder.
        return overlay_heatmap(image, amap, mask, vmin=0.0, vmax=2.0 * threshold)

    summary, n_failed = predict_to_folder(paths, args.out, scores_and_maps, pvalues_of, offset,
                                          threshold, overlay=overlay, contamination=contamination)
    print(summary)
    return 1 if n_failed else 0


# evaluate's table: the report's metric columns, between the method and the
# process's peak memory.
_COLUMNS = [("method", "method", ""), *_METRIC_COLUMNS, ("peak_rss_mb", "peak RSS MB", ".0f")]


def format_table(rows):
    """Rows of evaluate results as an aligned text table."""
    cells = [[title for _, title, _ in _COLUMNS]]
    for row in rows:
        values = [row.get(key, float("nan")) for key, _, _ in _COLUMNS]
        cells.append([
            "-" if isinstance(value, float) and np.isnan(value) else format(value, spec)
            for value, (_, _, spec) in zip(values, _COLUMNS)
        ])
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in cells
    )


def _painted_split(root, seed):
    """Normal images to fit on, and a held-out set with painted defects."""
    from sklearn.model_selection import train_test_split
    from sklearn.utils import Bunch

    from .datasets import load_folder, load_mvtec
    from .model_selection import SyntheticDefectScorer

    if (Path(root) / "train").is_dir():
        normals = load_mvtec(root, "train").images
    else:
        normals = load_folder(root).images
    if len(normals) < 10:
        raise ValueError(
            f"--synthetic holds out 20% of the normal images; {root} has only "
            f"{len(normals)}, at least 10 are needed."
        )
    fit_images, held = train_test_split(normals, test_size=0.2, random_state=seed)
    images, target, masks = SyntheticDefectScorer(random_state=seed).validation_set(held)
    return fit_images, Bunch(images=images, target=target, masks=masks)


def _evaluate(args):
    import joblib

    from .datasets import load_mvtec
    from .evaluation import FeatureCache, evaluate_pipeline
    from .registry import available_methods
    from .report import summarize_result, write_report

    factories = {name: info.factory for name, info in available_methods().items()}
    if args.synthetic and args.model:
        raise ValueError(
            "--synthetic fits each method on part of the normal images and judges it "
            "on the rest; a saved --model may have seen those images. Use one or the other."
        )
    if args.synthetic:
        train_images, test = _painted_split(args.root, args.seed)
    else:
        test = load_mvtec(args.root, "test")
    if args.model:
        jobs = [(Path(args.model).name, joblib.load(args.model), False)]
        train_images = None
    else:
        names = list(factories) if args.methods == "all" else args.methods.split(",")
        unknown = [n for n in names if n not in factories]
        if unknown:
            raise ValueError(f"Unknown method(s) {unknown}; choose from {list(factories)} or 'all'.")
        kwargs = {"random_state": args.seed, "verbose": 1}
        if args.image_size:
            kwargs["image_size"] = args.image_size
        jobs = [(n, factories[n](**kwargs), True) for n in names]
        if not args.synthetic:
            train_images = load_mvtec(args.root, "train").images
    cache = FeatureCache()
    rows, summaries = [], []
    for name, pipe, fit in jobs:
        print(f"{name}: {'fitting and ' if fit else ''}scoring ...", file=sys.stderr, flush=True)
        result = evaluate_pipeline(
            pipe, train_images, test.images, test.target, test.masks, cache=cache, fit=fit,
            return_maps=True,
        )
        # The report keeps a small summary; the maps go before the next method.
        summaries.append(summarize_result(name, result, test.images, test.target, test.masks,
                                          getattr(test, "defect_type", None)))
        for key in ("pipeline", "maps", "scores", "pro_curve"):
            result.pop(key, None)
        result = {"method": name, **result,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        rows.append(result)
    print(f"\n{args.root}: {len(test.images)} test images")
    print(format_table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[key for key, _, _ in _COLUMNS])
        writer.writeheader()
        writer.writerows({key: row.get(key, float("nan")) for key, _, _ in _COLUMNS} for row in rows)
    with open(out.with_suffix(".json"), "w") as fh:
        json.dump({"root": str(args.root), "results": rows}, fh, indent=2)
    write_report(out.with_suffix(".html"), summaries, title="skanomaly evaluate",
                 description=f"{args.root}: {len(test.images)} test images"
                             + (" (painted defects on held-out normal images)" if args.synthetic else ""))
    print(f"\nwrote {out.with_suffix('.csv')}, {out.with_suffix('.json')} and "
          f"{out.with_suffix('.html')} (report)")
    return 0


def build_parser():
    from .registry import available_methods

    parser = argparse.ArgumentParser(
        prog="skanomaly",
        description="Visual anomaly detection with scikit-learn estimators.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="fit PatchCore, print its accuracy, write an HTML report",
        description=DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--data", metavar="DIR", help="MVTec-layout category folder")
    demo.add_argument("--image-size", type=int, default=None,
                      help="backbone input size (default 128 synthetic, 256 --data)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--out", default="skanomaly_demo",
                      help="folder for report.html (default skanomaly_demo)")
    demo.set_defaults(handler=_demo)
    evaluate = commands.add_parser(
        "evaluate", help="measure methods on an MVTec-layout folder", description=EVALUATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("root", metavar="DIR", help="category folder in MVTec AD layout")
    evaluate.add_argument("--methods", default="patchcore",
                          help=f"comma-separated: {', '.join(available_methods())}, or 'all' "
                               "(default patchcore)")
    evaluate.add_argument("--model", metavar="FILE", help="score a saved joblib pipeline instead")
    evaluate.add_argument("--synthetic", action="store_true",
                          help="judge on painted defects on held-out normal images "
                               "(no test folder needed; see below)")
    evaluate.add_argument("--out", default="skanomaly_results",
                          help="output path without extension (default skanomaly_results)")
    evaluate.add_argument("--image-size", type=int, default=None, help="backbone input size")
    evaluate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    evaluate.set_defaults(handler=_evaluate)
    fit = commands.add_parser(
        "fit", help="fit a method on normal images and save it", description=FIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("--method", default="patchcore",
                     help=f"one of {', '.join(available_methods())} (default patchcore)")
    fit.add_argument("--train", required=True, metavar="DIR", help="normal images")
    fit.add_argument("-o", "--output", required=True, metavar="FILE",
                     help="model file to write: NAME.skops (loads no code; needs skops) "
                          "or NAME.joblib")
    fit.add_argument("--contamination", type=float, default=0.05,
                     help="target false-alarm rate on normal images (default 0.05)")
    fit.add_argument("--image-size", type=int, default=None, help="backbone input size")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.set_defaults(handler=_fit)
    predict = commands.add_parser(
        "predict", help="score images with a saved model", description=PREDICT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("model", metavar="MODEL",
                         help=".skops or .joblib file from 'skanomaly fit', or .onnx from "
                              "'skanomaly export'")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    predict.add_argument("--out", required=True, metavar="DIR", help="output folder")
    predict.set_defaults(handler=_predict)
    serve = commands.add_parser(
        "serve", help="browse a model's results in a local web app", description=SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("model", metavar="MODEL", help=".skops or .joblib file from 'skanomaly fit'")
    serve.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR", help="images to score at start")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free one)")
    serve.add_argument("--save-to", metavar="FILE",
                       help="where the page's Save button writes the model with its thresholds "
                            "(default: MODEL-thresholds beside MODEL)")
    serve.set_defaults(handler=_serve)
    from_anomalib = commands.add_parser(
        "from-anomalib", help="an anomalib PatchCore or PaDiM checkpoint as a skanomaly model",
        description=FROM_ANOMALIB_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from_anomalib.add_argument("checkpoint", metavar="CKPT", help="anomalib's model.ckpt")
    from_anomalib.add_argument("--calibration", required=True, metavar="DIR",
                               help="normal images not in the checkpoint's training set")
    from_anomalib.add_argument("-o", "--output", required=True, metavar="FILE",
                               help="model file to write: NAME.skops or NAME.joblib")
    from_anomalib.add_argument("--contamination", type=float, default=0.05,
                               help="target false-alarm rate on normal images (default 0.05)")
    from_anomalib.set_defaults(handler=_from_anomalib)
    calibrate = commands.add_parser(
        "calibrate", help="set a saved model's threshold from recent labelled images",
        description=CALIBRATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    calibrate.add_argument("model", metavar="MODEL", help=".skops or .joblib file from 'skanomaly fit'")
    calibrate.add_argument("--good", required=True, metavar="DIR",
                           help="good images the model did not learn from")
    calibrate.add_argument("--defective", metavar="DIR", help="defective images (to report recall)")
    calibrate.add_argument("--false-alarm-rate", type=float, default=None,
                           help="largest share of good images to flag (default: the model's)")
    calibrate.add_argument("--confidence", type=float, default=None,
                           help="probability that the rate holds (default: it holds on "
                                "average, as the threshold fit sets)")
    calibrate.add_argument("--no-pool", action="store_true",
                           help="set the threshold on the good images alone, never with the "
                                "model's own calibration scores")
    calibrate.add_argument("-o", "--output", required=True, metavar="FILE",
                           help="model file to write: NAME.skops or NAME.joblib")
    calibrate.set_defaults(handler=_calibrate)
    export = commands.add_parser(
        "export", help="export a saved model to ONNX", description=EXPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("model", metavar="MODEL", help=".skops or .joblib file from 'skanomaly fit'")
    export.add_argument("-o", "--output", required=True, metavar="FILE", help=".onnx file to write")
    export.set_defaults(handler=_export)
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
