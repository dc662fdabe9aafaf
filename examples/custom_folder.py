"""Your own parts: a folder of good images, one of bad ones, one of masks.

Writes a small dataset to a temporary folder (from the built-in synthetic
generator), then does what you would do with your own folders: load them,
fit on the good images only, threshold with a chosen false-alarm rate, and
save masks and boxes.

    python examples/custom_folder.py
"""

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from skanomaly import anomaly_boxes, anomaly_maps, anomaly_masks, make_patchcore
from skanomaly.calibration import conformal_pvalues
from skanomaly.datasets import load_folder, make_synthetic
from skanomaly.metrics import image_roc_auc, pixel_aupro


def write_folders(root):
    data = make_synthetic(40, 9, image_size=96, random_state=1)
    for i, (image, kind) in enumerate(zip(data.images, data.defect_type)):
        folder = root / ("good" if kind == "good" else f"bad/{kind}")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"part{i:03d}.png")
        if kind != "good":
            (root / "masks").mkdir(exist_ok=True)
            Image.fromarray(data.masks[i].astype(np.uint8) * 255).save(
                root / "masks" / f"part{i:03d}_mask.png"
            )


def main():
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_folders(root)
        data = load_folder(root / "good", root / "bad", root / "masks")
        good = [p for p, t in zip(data.images, data.target) if t == 1]
        train, held_good = good[:30], good[30:]
        test = held_good + [p for p, t in zip(data.images, data.target) if t == -1]
        y = np.r_[np.ones(len(held_good), int), -np.ones(len(test) - len(held_good), int)]
        masks = [None] * len(held_good) + [m for m, t in zip(data.masks, data.target) if t == -1]

        # Flag at most ~10% of good parts: held-out good images set the threshold.
        pipe = make_patchcore(image_size=96, contamination=0.1, random_state=0)
        pipe.set_params(knndetector__calibration_size=10).fit(train)
        maps = anomaly_maps(pipe, test)
        decision = pipe.decision_function(test)
        print(f"image AUROC {image_roc_auc(y, decision):.3f}  "
              f"AUPRO {pixel_aupro(masks, maps):.3f}")
        p = conformal_pvalues(pipe, test)
        print("p-values of the good parts:", np.round(p[y == 1], 3).tolist())
        print("p-values of the defective parts:", np.round(p[y == -1], 3).tolist())
        found = anomaly_masks(pipe, test, maps=maps)
        boxes = anomaly_boxes(pipe, test, maps=maps)
        worst = int(np.argmin(decision))  # the most anomalous part
        print(f"{Path(test[worst]).name}: {int(found[worst].sum())} anomalous pixels, "
              f"boxes {[(b['x0'], b['y0'], b['x1'], b['y1']) for b in boxes[worst]]}")


if __name__ == "__main__":
    main()
