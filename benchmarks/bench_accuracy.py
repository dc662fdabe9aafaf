"""Accuracy panel: every method's defaults on every shared set, beside anomalib.

For each set of ``--data`` (MVTec AD layout; by default the four sets of
``../shared/data``) and each method (``skanomaly evaluate``'s names), the
factory with its defaults is fitted on ``train/good`` from image paths and
scored on ``test``: image AUROC, pixel AUROC and AUPRO where the set has
masks, fit seconds (embedding the training images plus fitting the head) and
milliseconds per test image (reading, embedding and scoring).

When anomalib 2.7 is importable (optional: ``pip install anomalib``, in its
own environment), anomalib's torch model of the same method (PatchCore,
PaDiM, DFM, DFKDE, STFPM, FastFlow, CFlow) runs in the same process on the same decoded 256 px
tensors, with the same EfficientNet-Lite0 weights and the layers anomalib
uses for that method (PatchCore: strides 8 + 16; PaDiM: strides 4 + 8 + 16,
100 random channels; DFM: stride 16 pooled 4x4; DFKDE: stride 32; STFPM and
FastFlow: strides 4 + 8 + 16; CFlow: strides 8 + 16, our ``make_cflow``'s
patches, one flow per stride as anomalib's; all trained for our head's
``max_epochs`` with anomalib's loss, optimizer and batch size 32), and
anomalib's own scoring and map post-processing. anomalib's PatchCore bank is
its k-center greedy selection on its own random projection, computed with
skanomaly's exact blocked greedy (the same sequence, see
``bench_vs_anomalib.py``; anomalib's loop takes ~30 minutes a set here).
anomalib scores the test set in batches of 16 in its order; CFlow's scores
are relative to the rest of their batch, so its rows also give the image
AUROC of each image scored alone and of shuffled batches, and the table
shows the first as its own row, ``cflow[one image at a time]``.

``--variant`` adds rows with changed parameters, which is how defaults are
chosen on the whole panel::

    python benchmarks/bench_accuracy.py --methods patchcore,padim \\
        --variant "patchcore:patchembedder__count_include_pad=False" \\
        --variant "padim:gaussiandetector__regularization=0.01,gaussiandetector__regularization_scale=absolute"

    python benchmarks/bench_accuracy.py                # all methods, all sets
    python benchmarks/bench_accuracy.py --methods patchcore,padim \
        --backbone efficientnet_lite0 --backbone efficientnet_lite2
    python benchmarks/bench_accuracy.py --merge results/a.json results/b.json

Writes ``benchmarks/results/accuracy.json`` (one row per set, library,
method and seed, each with the command that measured it) and prints a
Markdown table with the panel mean and worst set per method. Runs
accumulate in that file: a row is replaced only when a later run measures
the same set, library, method and seed (``--fresh`` starts it empty), so
``--merge benchmarks/results/accuracy.json`` tabulates everything measured.
"""

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import numpy as np
from _results import PANEL_DATA, SETS, factories, panel_sets, save_json

HERE = Path(__file__).resolve().parent
DEFAULT_BACKBONE = "efficientnet_lite0"


def _parse_variant(text):
    method, _, assignments = text.partition(":")
    params = {}
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        try:
            params[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            params[key.strip()] = value.strip()
    return method.strip(), params


def _label(method, params):
    if not params:
        return method
    return method + "[" + ",".join(f"{k.split('__')[-1]}={v}" for k, v in params.items()) + "]"


def run_skanomaly(root, jobs, seed, backbone, cache):
    from skanomaly.datasets import load_mvtec
    from skanomaly.evaluation import evaluate_pipeline

    train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
    masks = test.masks if any(m is not None for m in test.masks) else None
    for method, params in jobs:
        pipe = factories()[method](backbone, random_state=seed)
        pipe.set_params(**params)
        label = _label(method, params) + ("" if backbone == DEFAULT_BACKBONE else f" ({backbone})")
        print(f"{root.name} {label} ...", file=sys.stderr, flush=True)
        result = evaluate_pipeline(pipe, train.images, test.images, test.target, masks,
                                   cache=cache)
        result.pop("pipeline")
        row = {"set": root.name, "library": "skanomaly", "method": label, "seed": seed,
               **{k: float(v) for k, v in result.items()}}
        print(f"  {row}", file=sys.stderr, flush=True)
        yield row


# -- anomalib ----------------------------------------------------------------

ANOMALIB_METHODS = ("patchcore", "padim", "dfm", "dfkde", "stfpm", "fastflow", "cflow")
# Reverse Distillation is not among them: anomalib builds its decoder and
# bottleneck for ResNet names only (``get_decoder``), and no ResNet weights
# can be had offline, so no same-weights comparison exists.
# anomalib's trainable models learn on the same tensors for the same number of
# epochs as our default head (anomalib leaves the epoch count to its Engine),
# with anomalib's own loss, optimizer and datamodule batch size.
ANOMALIB_TRAIN_BATCH = 32
# Images per scoring call. anomalib's datamodules batch a test set too
# (eval_batch_size, 32 by default), in the folder's order.
ANOMALIB_TEST_BATCH = 16
# Methods whose anomalib scores depend on the other images of the scoring
# batch: CFlow's map is exp(log-likelihood - the batch's largest), inverted
# against the batch's largest. Their rows also report the image AUROC of
# each test image scored alone and of shuffled batches.
BATCH_RELATIVE = ("cflow",)


def _tensors(paths, shape=(256, 256)):
    from skanomaly._torch import _load_resized

    start = time.perf_counter()
    images = (_load_resized(paths, 0, shape) - 0.5) / 0.5  # Lite0's normalisation
    return images, (time.perf_counter() - start) / len(paths)


def _load_lite0(extractor):
    from skanomaly.backbones import load_backbone

    target = extractor.feature_extractor
    source = load_backbone("efficientnet_lite0").model.state_dict()
    keys = [k for k in target.state_dict() if k in source]
    missing = [k for k in target.state_dict() if k not in source]
    if missing:
        raise SystemExit(f"anomalib's extractor lacks weights for {missing[:5]}")
    target.load_state_dict({k: source[k] for k in keys})


def _anomalib_model(method, seed):
    import torch

    torch.manual_seed(seed)
    arch = "tf_efficientnet_lite0"
    if method == "patchcore":
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        model = PatchcoreModel(layers=["blocks.2", "blocks.4"], backbone=arch, pre_trained=False)
    elif method == "padim":
        from anomalib.models.image.padim.torch_model import PadimModel

        model = PadimModel(backbone=arch, layers=["blocks.1", "blocks.2", "blocks.4"],
                           pre_trained=False, n_features=100)
    elif method == "dfm":
        from anomalib.models.image.dfm.torch_model import DFMModel

        model = DFMModel(backbone=arch, layer="blocks.4", pre_trained=False)
    elif method == "dfkde":
        from anomalib.models.image.dfkde.torch_model import DfkdeModel

        model = DfkdeModel(backbone=arch, layers=["blocks.6"], pre_trained=False)
    elif method == "stfpm":
        return _anomalib_stfpm(arch)
    elif method == "cflow":
        return _anomalib_cflow(arch)
    else:
        return _anomalib_fastflow(arch)
    _load_lite0(model.feature_extractor)
    return model


def _anomalib_stfpm(arch):
    """anomalib's STFPMModel on Lite0's stride 4 / 8 / 16 stages (ResNet's
    layer1-3, as in the paper); its teacher asks timm for downloaded weights,
    so it is built without them and given Lite0's."""
    import anomalib.models.image.stfpm.torch_model as stfpm
    from anomalib.models.components import TimmFeatureExtractor

    original = stfpm.TimmFeatureExtractor
    stfpm.TimmFeatureExtractor = lambda *a, **k: TimmFeatureExtractor(*a, **{**k, "pre_trained": False})
    try:
        model = stfpm.STFPMModel(layers=["blocks.1", "blocks.2", "blocks.4"], backbone=arch)
    finally:
        stfpm.TimmFeatureExtractor = original
    _load_lite0(model.teacher_model)
    return model


def _anomalib_cflow(arch):
    """anomalib's CflowModel (its freia coupling blocks, 128-channel
    positional condition, clamp 1.9) on Lite0's stride 8 / 16 stages, the
    patches our ``make_cflow`` models; built without downloaded weights."""
    from anomalib.models.image.cflow.torch_model import CflowModel

    model = CflowModel(backbone=arch, layers=["blocks.2", "blocks.4"], pre_trained=False)
    _load_lite0(model.encoder)
    return model


def _cflow_step(model, images, optimizer, generator):
    """anomalib's ``Cflow.training_step``: every patch of the batch, shuffled,
    in fibre batches of 64, one Adam step each."""
    import torch
    import torch.nn.functional as F
    from anomalib.models.image.cflow.utils import get_logp, positional_encoding_2d

    with torch.no_grad():
        activation = model.encoder(images)
    for layer_idx, layer in enumerate(model.pool_layers):
        features = activation[layer].detach()
        n, c, h, w = features.shape
        condition = positional_encoding_2d(model.condition_vector, h, w)
        condition = condition[None].expand(n, -1, -1, -1).permute(0, 2, 3, 1).reshape(-1, model.condition_vector)
        rows = features.permute(0, 2, 3, 1).reshape(-1, c)
        perm = torch.randperm(len(rows), generator=generator)
        n_fibres = len(rows) // model.fiber_batch_size
        decoder = model.decoders[layer_idx]
        for k in range(n_fibres):
            stop = len(rows) if k == n_fibres - 1 else (k + 1) * model.fiber_batch_size
            idx = perm[k * model.fiber_batch_size:stop]
            optimizer.zero_grad()
            p_u, log_jac_det = decoder(rows[idx], [condition[idx]])
            loss = -F.logsigmoid(get_logp(c, p_u, log_jac_det) / c)
            loss.mean().backward()
            optimizer.step()


def _anomalib_fastflow(arch):
    """anomalib's FastflowModel (its flow blocks, norms and map) on Lite0's
    stride 4 / 8 / 16 stages; its constructor accepts ResNet / CaiT / DeiT
    names only, so it is built for resnet18 and its extractor, norms and
    flows are then rebuilt for Lite0's channels, as its ResNet branch does."""
    import timm
    from anomalib.models.image.fastflow.torch_model import (
        FastflowModel,
        create_fast_flow_block,
    )
    from torch import nn

    size = (256, 256)
    model = FastflowModel(input_size=size, backbone="resnet18", pre_trained=False)
    model.feature_extractor = timm.create_model(arch, pretrained=False, features_only=True,
                                                out_indices=[1, 2, 3])
    for parameter in model.feature_extractor.parameters():
        parameter.requires_grad = False
    _load_lite0(type("Extractor", (), {"feature_extractor": model.feature_extractor}))
    info = model.feature_extractor.feature_info
    dims = [[c, size[0] // r, size[1] // r] for c, r in zip(info.channels(), info.reduction())]
    model.norms = nn.ModuleList(nn.LayerNorm(d, elementwise_affine=True) for d in dims)
    model.fast_flow_blocks = nn.ModuleList(
        create_fast_flow_block(input_dimensions=d, conv3x3_only=False, hidden_ratio=1.0,
                               flow_steps=8) for d in dims)
    return model


def _anomalib_train(method, model, images, seed, epochs):
    """anomalib's training step for STFPM / FastFlow (loss and optimizer from
    its Lightning module), in a plain loop."""
    import torch
    from torch import optim

    if method == "stfpm":
        from anomalib.models.image.stfpm.loss import STFPMLoss

        loss_fn = STFPMLoss()
        optimizer = optim.SGD(model.student_model.parameters(), lr=0.4, momentum=0.9,
                              dampening=0.0, weight_decay=0.001)
    elif method == "cflow":
        optimizer = optim.Adam(model.decoders.parameters(), lr=0.0001)
    else:
        from anomalib.models.image.fastflow.loss import FastflowLoss

        loss_fn = FastflowLoss()
        optimizer = optim.Adam(model.parameters(), lr=0.001, weight_decay=0.00001)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), ANOMALIB_TRAIN_BATCH):
            batch = images[order[start:start + ANOMALIB_TRAIN_BATCH]]
            if method == "cflow":
                _cflow_step(model, batch, optimizer, generator)
                continue
            optimizer.zero_grad()
            loss = loss_fn(*model(batch))
            loss.backward()
            optimizer.step()
    model.eval()


def _anomalib_fit(method, model, images, seed, epochs=None):
    import torch

    if method in ("stfpm", "fastflow", "cflow"):
        _anomalib_train(method, model, images, seed, epochs)
        return
    model.train()
    model.feature_extractor.eval()  # frozen, as anomalib's training_step keeps it
    with torch.no_grad():
        for start in range(0, len(images), 16):
            model(images[start:start + 16])
    if method == "patchcore":
        from anomalib.models.components.sampling import KCenterGreedy

        from skanomaly.coreset import kcenter_greedy

        embedding = torch.vstack(model.embedding_store)
        model.embedding_store.clear()
        sampler = KCenterGreedy(embedding=embedding, sampling_ratio=0.1)
        sampler.model.fit(embedding)
        projected = sampler.model.transform(embedding).numpy()
        first = int(torch.randint(len(embedding), (1,), generator=torch.Generator().manual_seed(seed)))
        idx = kcenter_greedy(projected, sampler.coreset_size, projection_dim=None,
                             initial_center=first)
        model.memory_bank = embedding[torch.from_numpy(np.asarray(idx))]
    else:
        model.fit()
    model.eval()


def _anomalib_score(model, images, batch=ANOMALIB_TEST_BATCH):
    import torch

    scores, maps = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            out = model(images[start:start + batch])
            scores.append(out.pred_score.reshape(-1))
            if out.anomaly_map is not None:
                maps.append(out.anomaly_map.reshape(len(out.pred_score), *out.anomaly_map.shape[-2:]))
    return torch.cat(scores).numpy(), (torch.cat(maps).numpy() if maps else None)


def _batch_dependence(model, images, defective, seed):
    """Image AUROC of a batch-relative model scored one image at a time (as a
    user scoring each new part) and in batches of a shuffled test set (the
    row's own figure keeps the test set's folder order, so a batch holds
    mostly one kind of image)."""
    from sklearn.metrics import roc_auc_score

    alone, _ = _anomalib_score(model, images, batch=1)
    order = np.random.RandomState(seed).permutation(len(images))
    shuffled = np.empty(len(images))
    shuffled[order], _ = _anomalib_score(model, images[order])
    return {"image_auroc_one_at_a_time": float(roc_auc_score(defective, alone)),
            "image_auroc_shuffled_batches": float(roc_auc_score(defective, shuffled))}


def _our_epochs(method):
    head = factories()[method]()[-1]
    return getattr(head, "max_epochs", None)


def run_anomalib(root, methods, seed):
    import torch
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from skanomaly.datasets import load_mvtec
    from skanomaly.metrics import pixel_aupro, pixel_roc_auc

    train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
    has_masks = any(m is not None for m in test.masks)
    shapes = [Image.open(p).size[::-1] for p in test.images]
    for method in methods:
        print(f"{root.name} anomalib {method} ...", file=sys.stderr, flush=True)
        model = _anomalib_model(method, seed)
        start = time.perf_counter()
        train_x, _ = _tensors(train.images)
        _anomalib_fit(method, model, train_x, seed, _our_epochs(method))
        fit_s = time.perf_counter() - start
        del train_x
        start = time.perf_counter()
        test_x, _ = _tensors(test.images)
        scores, maps = _anomalib_score(model, test_x)
        ms = 1000 * (time.perf_counter() - start) / len(test.images)
        row = {"set": root.name, "library": "anomalib", "method": method, "seed": seed,
               "image_auroc": float(roc_auc_score(test.target == -1, scores)),
               "pixel_auroc": float("nan"), "aupro": float("nan"),
               "fit_s": fit_s, "ms_per_image": ms}
        if has_masks and maps is not None:
            full = [torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=s,
                                                    mode="bilinear")[0, 0].numpy()
                    for m, s in zip(maps, shapes)]
            row["pixel_auroc"] = float(pixel_roc_auc(test.masks, full))
            row["aupro"] = float(pixel_aupro(test.masks, full))
        if method in BATCH_RELATIVE:
            row.update(_batch_dependence(model, test_x, test.target == -1, seed))
        print(f"  {row}", file=sys.stderr, flush=True)
        yield row


# -- table -------------------------------------------------------------------

def _fmt(value):
    return "-" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _scored_alone(rows):
    """Rows of batch-relative models again, with the image AUROC of each test
    image scored alone (the figure to set beside ours), as their own method."""
    return [{**r, "method": f"{r['method']}[one image at a time]",
             "image_auroc": r["image_auroc_one_at_a_time"]}
            for r in rows if "image_auroc_one_at_a_time" in r]


def table(rows):
    rows = list(rows) + _scored_alone(rows)
    sets = [s for s in SETS if any(r["set"] == s for r in rows)]
    sets += sorted({r["set"] for r in rows} - set(sets))
    keys = []
    for r in rows:
        if (r["library"], r["method"]) not in keys:
            keys.append((r["library"], r["method"]))
    keys.sort(key=lambda k: (k[1].split("[")[0], k[1], k[0] != "skanomaly"))
    header = ["method", "library"] + [f"{s} image / pixel" for s in sets] + [
        "mean image", "worst image", "mean pixel",
        # At the model's own threshold (contamination 0.05): what predict does.
        "worst good flagged", "mean defects flagged (best at 5%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for library, method in keys:
        cells, image, pixel, flagged, caught, oracle = [method, library], [], [], [], [], []
        for s in sets:
            found = [r for r in rows if (r["library"], r["method"], r["set"]) == (library, method, s)]
            if not found:
                cells.append("")
                continue
            # The last row of each seed, averaged over seeds.
            by_seed = {r.get("seed", 0): r for r in found}
            img = float(np.mean([r["image_auroc"] for r in by_seed.values()]))
            pix = float(np.mean([r["pixel_auroc"] for r in by_seed.values()]))
            image.append(img)
            if all("false_alarm_rate" in r for r in by_seed.values()):
                flagged.append(max(r["false_alarm_rate"] for r in by_seed.values()))
                caught.append(np.mean([r["recall"] for r in by_seed.values()]))
                oracle.append(np.mean([r["oracle_recall"] for r in by_seed.values()]))
            if np.isfinite(pix):
                pixel.append(pix)
            seeds = f" ({len(by_seed)} seeds)" if len(by_seed) > 1 else ""
            cells.append(f"{_fmt(img)} / {_fmt(pix)}{seeds}")
        complete = len(image) == len(sets)
        cells += [_fmt(np.mean(image)) if complete else "", _fmt(min(image)) if complete else "",
                  _fmt(np.mean(pixel)) if complete and pixel else ""]
        point = complete and len(flagged) == len(sets)
        cells += [f"{max(flagged):.2f}" if point else "",
                  f"{np.mean(caught):.2f} ({np.mean(oracle):.2f})" if point else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(PANEL_DATA))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--methods", default="all",
                        help="comma-separated names, 'fast' (no training loop) or 'all'")
    parser.add_argument("--variant", action="append", default=[],
                        help="METHOD:step__param=value,... (an extra row)")
    parser.add_argument("--backbone", action="append", default=None,
                        help="backbone(s) of the skanomaly rows (default efficientnet_lite0; "
                             "repeat to compare); anomalib always runs on Lite0")
    parser.add_argument("--anomalib", choices=("auto", "no", "only"), default="auto",
                        help="anomalib's rows when it is importable (auto), never (no), "
                             "or alone, without skanomaly's (only)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated random_state values; the table averages them")
    parser.add_argument("--out", default=str(HERE / "results" / "accuracy.json"),
                        help="results file; rows of earlier runs in it are kept unless this "
                             "run measures the same set, library, method and seed")
    parser.add_argument("--fresh", action="store_true",
                        help="start --out empty instead of keeping earlier rows")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="tabulate earlier result files instead of running")
    args = parser.parse_args(argv)
    if args.merge:
        rows = [row for path in args.merge for row in json.loads(Path(path).read_text())["rows"]]
        print(table(rows))
        return
    names = {"all": list(factories()), "fast": list(factories(trained=False))}.get(
        args.methods, [m for m in args.methods.split(",") if m])
    jobs = [(m, {}) for m in names] + [_parse_variant(v) for v in args.variant]
    unknown = sorted({m for m, _ in jobs} - set(factories()))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {list(factories())}")
    with_anomalib = False
    if args.anomalib != "no":
        try:
            import anomalib  # noqa: F401
            with_anomalib = True
        except ImportError:
            if args.anomalib == "only":
                raise SystemExit("--anomalib only: anomalib is not importable")
            print("anomalib not importable: skanomaly rows only", file=sys.stderr)
    import torch

    from skanomaly.evaluation import FeatureCache

    meta = {"command": " ".join(sys.argv), "torch_threads": torch.get_num_threads(),
            "seeds": args.seeds}
    if with_anomalib:
        meta["anomalib"] = sys.modules["anomalib"].__version__
    earlier = [] if args.fresh else _earlier_rows(args.out)
    rows = []
    for name, root in panel_sets(args.data, args.sets):
        cache, runs = FeatureCache(), []  # embeddings shared by the seeds of a set
        for seed in [int(s) for s in args.seeds.split(",")]:
            if args.anomalib != "only":
                runs += [run_skanomaly(root, jobs, seed, backbone, cache)
                         for backbone in args.backbone or [DEFAULT_BACKBONE]]
            if with_anomalib:
                runs.append(run_anomalib(root, [m for m in ANOMALIB_METHODS if m in names], seed))
        for run in runs:
            for row in run:
                rows.append({**row, "command": meta["command"]})
                # After each row: nothing lost. The file accumulates runs, so
                # the README's tables can be rebuilt from it (--merge).
                measured = {_row_key(r) for r in rows}
                kept = [r for r in earlier if _row_key(r) not in measured]
                save_json({"meta": meta, "rows": kept + rows}, args.out)
    print(table(rows))


def _row_key(row):
    return row["set"], row["library"], row["method"], row["seed"]


def _earlier_rows(path):
    """Rows already in the results file ``path`` ([] when there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())["rows"]
    except (ValueError, KeyError) as exc:
        raise SystemExit(f"{path} is not a results file of this bench ({exc}); "
                         "pass --fresh to overwrite it or --out for another file")


if __name__ == "__main__":
    main()
