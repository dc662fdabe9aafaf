"""Exact vs approximate (inverted file) memory-bank search for PatchCore on bottle.

One fit of the default PatchCore (the bank is the same for both); the test
images are embedded once, then scored with each search. Reports image and
pixel AUROC, the recall of the nearest bank entry over all test patches, the
index build time and the search time per image (embedding excluded: it is
the same for both).

    python benchmarks/bench_approximate_knn.py [--data ../shared/data/mvtec_bottle]
"""

import argparse
import json
import sys
import time
from pathlib import Path

from _results import PANEL_DATA, save_json

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = PANEL_DATA / "mvtec_bottle"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(HERE / "results" / "approximate_knn.json"))
    args = parser.parse_args(argv)
    from sklearn.metrics import roc_auc_score

    from skanomaly import make_patchcore
    from skanomaly.datasets import load_mvtec
    from skanomaly.maps import upsample_patch_scores
    from skanomaly.metrics import pixel_roc_auc
    from skanomaly.neighbors import ApproximateNeighbors, kneighbors

    train, test = load_mvtec(args.data, "train"), load_mvtec(args.data, "test")
    pipe = make_patchcore(random_state=0).fit(train.images)
    head = pipe[-1]
    feats = pipe[0].transform(test.images)
    from PIL import Image

    shapes = [Image.open(p).size[::-1] for p in test.images]
    queries = feats.reshape(-1, feats.shape[-1])
    result = {"bank": list(head.memory_bank_.shape), "test_patches": len(queries)}
    start = time.perf_counter()
    index = ApproximateNeighbors(head.memory_bank_, random_state=0)
    result["index_build_s"] = time.perf_counter() - start
    _, exact_idx = kneighbors(queries, head.memory_bank_, 1)
    _, approx_idx = index.kneighbors(queries, 1)
    result["recall_at_1"] = float((exact_idx[:, 0] == approx_idx[:, 0]).mean())
    for name, search in (("exact", None), ("approximate", index)):
        head.index_ = search
        start = time.perf_counter()
        scores, patches = head.score_samples_and_patches(feats)
        result[f"{name}_search_ms_per_image"] = 1000 * (time.perf_counter() - start) / len(feats)
        maps = upsample_patch_scores(patches, shapes, model_shape=pipe[0].image_shape_)
        result[f"{name}_image_auroc"] = roc_auc_score(test.target, scores)
        result[f"{name}_pixel_auroc"] = pixel_roc_auc(test.masks, maps)
        print(f"{name}: image {result[f'{name}_image_auroc']:.4f}, pixel "
              f"{result[f'{name}_pixel_auroc']:.4f}, "
              f"{result[f'{name}_search_ms_per_image']:.1f} ms/img", file=sys.stderr)
    save_json(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
