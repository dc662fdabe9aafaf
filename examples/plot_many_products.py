"""
Many products in one estimator
==============================

``GroupedDetector`` fits one detector per product, each with its own memory
bank and its own calibrated threshold, behind one estimator. ``predict``
routes each image by the product given, or, when none is given, by the
nearest product (``route``). Three "products" here: the synthetic texture
as is, mirrored and tinted, and turned to grey.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

from skanomaly import GroupedDetector, make_patchcore
from skanomaly.datasets import make_synthetic
from skanomaly.metrics import image_roc_auc


def product(kind, seed):
    data = make_synthetic(30, 8, image_size=48, random_state=seed)
    images = data.images.astype(np.float32)
    if kind == "tinted":
        images = images[:, :, ::-1] * np.array([1.0, 0.6, 0.4])
    elif kind == "grey":
        images = np.repeat(images.mean(axis=3, keepdims=True), 3, axis=3)
    return images.astype(np.uint8), data.target


kinds = ["plain", "tinted", "grey"]
parts = {kind: product(kind, seed) for seed, kind in enumerate(kinds)}
train = np.concatenate([parts[k][0][:22] for k in kinds])
groups = np.repeat(kinds, 22)
model = GroupedDetector(make_patchcore(image_size=48, random_state=0)).fit(train, groups=groups)

# %%
# Routed without being told the product
# -------------------------------------
fig, axes = plt.subplots(1, 3, figsize=(9, 2.8), sharey=True)
for ax, kind in zip(axes, kinds):
    images, target = parts[kind][0][22:], parts[kind][1][22:]
    routed = model.route(images)
    scores = model.score_samples(images)
    print(f"{kind:6s} routed right {np.mean(routed == kind):.2f}, "
          f"image AUROC {image_roc_auc(target, scores):.3f}")
    ax.imshow(np.concatenate([images[0], images[-1]], axis=1))
    ax.set_title(f"{kind}: good | defective", fontsize=9)
    ax.axis("off")
fig.tight_layout()
plt.show()
