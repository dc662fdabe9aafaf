"""
Quick start: fit on good images, score, draw heatmaps
=====================================================

PatchCore learns what a good part looks like from normal images only. Here
it is fitted on the built-in synthetic dataset (a woven texture; no
download), scores held-out images, and draws each one's anomaly map over
it, with the true defect outlined in green. On your own folder, pass paths
instead: ``make_patchcore().fit(["good/001.png", ...])``.
"""

# %%
# Fit on normal images
# --------------------
# ``make_patchcore`` returns an ordinary scikit-learn Pipeline: a frozen
# backbone that turns each image into a grid of patch features, then a
# memory bank of normal patches.
import matplotlib.pyplot as plt
import numpy as np

from skanomaly import anomaly_maps, make_patchcore
from skanomaly.datasets import make_synthetic
from skanomaly.metrics import image_roc_auc, pixel_roc_auc
from skanomaly.plotting import overlay_heatmap

data = make_synthetic(40, 12, image_size=64, random_state=0)
train, test = data.images[:30], data.images[30:]
pipe = make_patchcore(image_size=64, random_state=0).fit(train)
print(pipe)

# %%
# Score and label new images
# --------------------------
# ``score_samples`` is higher for more normal images (scikit-learn's
# convention); ``predict`` answers +1 (good) or -1 (defective) at a threshold
# calibrated on training images the scoring model had not learnt from.
scores = pipe.score_samples(test)
labels = pipe.predict(test)
print(f"image AUROC {image_roc_auc(data.target[30:], scores):.3f}")
print(f"flagged {np.sum(labels == -1)} of {len(test)} "
      f"({np.sum(data.target[30:] == -1)} are defective)")

# %%
# Where is the defect?
# --------------------
# ``anomaly_maps`` gives one map per image at the image's own size, higher
# where it looks less normal.
maps = anomaly_maps(pipe, test)
print(f"pixel AUROC {pixel_roc_auc(list(data.masks[30:]), maps):.3f}")
shown = [i for i in range(len(test)) if data.target[30 + i] == -1][:4] + [0, 1]
fig, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 2.6))
for ax, i in zip(axes, shown):
    ax.imshow(overlay_heatmap(test[i], maps[i], data.masks[30 + i], vmin=0, vmax=maps.max()))
    ax.set_title(f"{data.defect_type[30 + i]}\nscore {scores[i]:.1f}", fontsize=9)
    ax.axis("off")
fig.tight_layout()
plt.show()
