"""
Thresholds, p-values, masks and boxes
=====================================

What a line acts on is the label, the mask and the box at the threshold,
not the AUROC. Every skanomaly head calibrates its threshold on scores of
training images that the scoring model had not learnt from, so about
``contamination`` of new good images are flagged, and the p-value of a
good image is uniform. Masks use a pixel threshold that the maps of about
``contamination`` of good images exceed anywhere, so good parts get empty
masks. ``calibrate`` moves both thresholds onto recent labelled images.

It runs on MVTec AD's bottle when ``../shared/data`` is beside the
repository, else on the built-in synthetic texture (whose painted defects
are so strong at small sizes that their masks spread over most of the
image).
"""

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from skanomaly import anomaly_boxes, anomaly_masks, make_padim
from skanomaly.calibration import calibrate, conformal_pvalues
from skanomaly.datasets import load_mvtec, make_synthetic
from skanomaly.metrics import image_operating_point

try:
    _here = Path(__file__).resolve().parent
except NameError:  # run cell by cell
    _here = Path.cwd()
bottle = _here.parent.parent / "shared" / "data" / "mvtec_bottle"
if bottle.is_dir():
    train, test = load_mvtec(bottle, "train"), load_mvtec(bottle, "test")
    train_images, size = train.images[::3], 256  # a third of them: a quicker build
    good = [p for p, t in zip(test.images, test.target) if t == 1]
    bad = [p for p, t in zip(test.images, test.target) if t == -1][::2]
else:
    data = make_synthetic(100, 30, image_size=64, random_state=2)
    train_images, size = data.images[:60], 64
    good, bad = list(data.images[60:100]), list(data.images[100:])
pipe = make_padim(image_size=size, random_state=0).fit(train_images)

# %%
# p-values of new good and defective images
# -----------------------------------------
# ``predict`` flags exactly the images whose p-value is at most
# ``contamination`` (5% here).
p_good, p_bad = conformal_pvalues(pipe, good), conformal_pvalues(pipe, bad)
target = np.r_[np.ones(len(good)), -np.ones(len(bad))]
point = image_operating_point(target, pipe.decision_function(good + bad), 0.05)
print(f"good flagged {point['false_alarm_rate']:.2f} (asked 0.05), "
      f"defects flagged {point['recall']:.2f}")
fig, ax = plt.subplots(figsize=(5, 3))
ax.hist(p_good, bins=np.linspace(0, 1, 21), alpha=0.7, label="good images")
ax.hist(p_bad, bins=np.linspace(0, 1, 21), alpha=0.7, label="defective images")
ax.axvline(0.05, color="k", ls="--", label="contamination = 0.05")
ax.set_xlabel("conformal p-value")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# Masks and boxes at the calibrated pixel threshold
# -------------------------------------------------
shown = good[:3] + bad[:3]
masks, boxes = anomaly_masks(pipe, shown), anomaly_boxes(pipe, shown)
fig, axes = plt.subplots(1, len(shown), figsize=(12, 2.4))
for ax, image, mask, found in zip(axes, shown, masks, boxes):
    ax.imshow(plt.imread(image) if isinstance(image, str) else image, cmap="gray")
    for box in found:
        ax.add_patch(plt.Rectangle((box["x0"], box["y0"]), box["x1"] - box["x0"],
                                   box["y1"] - box["y0"], fill=False, color="red", lw=1.5))
    ax.set_title(f"{len(found)} box(es), {mask.mean():.1%} masked", fontsize=9)
    ax.axis("off")
fig.tight_layout()

# %%
# Recalibrating on recent labelled parts
# --------------------------------------
# ``calibrate`` keeps the loosest threshold whose false-alarm rate stays
# within the rate asked (here on average; ``confidence=`` for a stated
# probability), which catches the most defects of any such threshold. The
# new good images join the model's own calibration unless a rank test finds
# them different (a drift).
summary = calibrate(pipe, good[: len(good) // 2], bad[: len(bad) // 2], false_alarm_rate=0.1)
print(f"recalibrated on {summary['n_good']} good images "
      f"({'pooled with' if summary['pooled'] else 'without'} the training calibration): "
      f"flags {summary['good_flagged']} of them and {summary['recall']:.0%} of the defective ones")
plt.show()
