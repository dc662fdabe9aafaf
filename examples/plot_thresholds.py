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
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

from skanomaly import anomaly_boxes, anomaly_masks, make_padim
from skanomaly.calibration import calibrate, conformal_pvalues
from skanomaly.datasets import make_synthetic
from skanomaly.metrics import image_operating_point

data = make_synthetic(120, 30, image_size=48, random_state=2)
good, bad = data.images[data.target == 1], data.images[data.target == -1]
pipe = make_padim(image_size=48, contamination=0.05, random_state=0).fit(good[:60])

# %%
# p-values of new good and defective images
# -----------------------------------------
# ``predict`` flags exactly the images whose p-value is at most
# ``contamination``.
p_good, p_bad = conformal_pvalues(pipe, good[60:]), conformal_pvalues(pipe, bad)
target = np.r_[np.ones(len(p_good)), -np.ones(len(p_bad))]
point = image_operating_point(target, pipe.decision_function(np.concatenate([good[60:], bad])), 0.05)
print(f"good flagged {point['false_alarm_rate']:.2f} (asked 0.05), defects flagged {point['recall']:.2f}")
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
shown = np.concatenate([good[60:63], bad[:3]])
masks, boxes = anomaly_masks(pipe, shown), anomaly_boxes(pipe, shown)
fig, axes = plt.subplots(1, len(shown), figsize=(12, 2.4))
for ax, image, mask, found in zip(axes, shown, masks, boxes):
    ax.imshow(image)
    ax.contour(mask, levels=[0.5], colors="yellow", linewidths=1)
    for box in found:
        ax.add_patch(plt.Rectangle((box["x0"], box["y0"]), box["x1"] - box["x0"],
                                   box["y1"] - box["y0"], fill=False, color="red"))
    ax.set_title(f"{len(found)} box(es)", fontsize=9)
    ax.axis("off")
fig.tight_layout()

# %%
# Recalibrating on recent labelled parts
# --------------------------------------
# ``calibrate`` keeps the loosest threshold whose false-alarm rate stays
# within the rate asked (here on average; ``confidence=`` for a stated
# probability), which catches the most defects of any such threshold.
summary = calibrate(pipe, good[60:100], bad[:15], false_alarm_rate=0.1)
print(f"recalibrated on {summary['n_good']} good images: flags {summary['good_flagged']} "
      f"of them and {summary['recall']:.0%} of the defective ones")
plt.show()
