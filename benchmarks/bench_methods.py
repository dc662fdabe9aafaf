"""Every frozen-feature method on MVTec-layout categories: one table.

Usage: python benchmarks/bench_methods.py [ROOT ...] [--methods a,b] [--json OUT]
       python benchmarks/bench_methods.py --contaminated [ROOT]

Embeddings are computed once per distinct embedder configuration and shared
by the methods that use it; "fit s" is then embedding + head fit of that
method. The --contaminated run trains PatchCore and SoftPatch on the normal
images plus 10% of the defective test images (labelled as normal) and
evaluates both on the remaining test images.
"""

import argparse
import json
import time

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score
from sklearn.utils import Bunch

import skanomaly
from skanomaly.datasets import load_mvtec
from skanomaly.embedders import _image_shape
from skanomaly.maps import upsample_patch_scores
from skanomaly.metrics import pixel_roc_auc

FACTORIES = {
    "patchcore": skanomaly.make_patchcore,
    "padim": skanomaly.make_padim,
    "spade": skanomaly.make_spade,
    "softpatch": skanomaly.make_softpatch,
    "dfm": skanomaly.make_dfm,
    "dfkde": skanomaly.make_dfkde,
}


class EmbeddingCache:
    def __init__(self):
        self.store = {}

    def __call__(self, transformer, images):
        key = (repr(transformer.get_params()), tuple(images))
        if key not in self.store:
            start = time.perf_counter()
            features = transformer.fit(None).transform(images)
            self.store[key] = (features, time.perf_counter() - start)
        return self.store[key]


def evaluate(name, train_images, test, cache, seed=0):
    pipe = FACTORIES[name](random_state=seed)
    embedder, head = pipe[:-1], pipe[-1]
    train_feats, embed_train_s = cache(embedder, train_images)
    test_feats, embed_test_s = cache(embedder, test.images)
    start = time.perf_counter()
    head.fit(train_feats)
    head_fit_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = head.decision_function(test_feats)
    score_s = time.perf_counter() - start
    row = {
        "method": name,
        "image_auroc": roc_auc_score(test.target, scores),
        "pixel_auroc": float("nan"),
        "fit_s": embed_train_s + head_fit_s,
        "head_fit_s": head_fit_s,
        "ms_per_image": 1000 * (embed_test_s + score_s) / len(test.images),
    }
    if np.ndim(test_feats) == 4:
        shapes = [Image.open(p).size[::-1] for p in test.images]
        maps = upsample_patch_scores(
            head.score_patches(test_feats), shapes, model_shape=_image_shape(embedder[0].image_size)
        )
        row["pixel_auroc"] = pixel_roc_auc(test.masks, maps)
    print(row, flush=True)
    return row


def print_table(title, rows):
    print(f"\n{title}")
    print(f"{'method':12s} {'image AUROC':>11s} {'pixel AUROC':>11s} {'fit s':>7s} {'ms/img':>7s}")
    for r in rows:
        print(f"{r['method']:12s} {r['image_auroc']:11.4f} {r['pixel_auroc']:11.4f} "
              f"{r['fit_s']:7.1f} {r['ms_per_image']:7.1f}")


def contaminated(root, fraction=0.1, seed=0):
    train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
    rng = np.random.default_rng(seed)
    bad = np.flatnonzero(test.target == -1)
    slipped = set(rng.choice(bad, int(round(fraction * len(bad))), replace=False).tolist())
    keep = [i for i in range(len(test.images)) if i not in slipped]
    rest = Bunch(
        images=[test.images[i] for i in keep],
        target=test.target[keep],
        masks=[test.masks[i] for i in keep],
    )
    train_images = train.images + [test.images[i] for i in sorted(slipped)]
    cache = EmbeddingCache()
    return [evaluate(m, train_images, rest, cache, seed) for m in ("patchcore", "softpatch")], len(slipped)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", default=["../shared/data/mvtec_bottle"])
    parser.add_argument("--methods", default=",".join(FACTORIES))
    parser.add_argument("--contaminated", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    for root in args.roots:
        if args.contaminated:
            rows, n = contaminated(root)
            print_table(f"{root}: trained with {n} defective images slipped in", rows)
        else:
            train, test = load_mvtec(root, "train"), load_mvtec(root, "test")
            cache = EmbeddingCache()
            rows = [evaluate(m, train.images, test, cache) for m in args.methods.split(",")]
            print_table(root, rows)
        results[root] = rows
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
