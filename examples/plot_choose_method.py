"""
Choosing a method without defective images
==========================================

Which method suits a new product? With good images only, paint synthetic
defects (cut-paste, scratches, blobs) on held-out good images and rank the
candidates by how well they find them: what ``skanomaly evaluate DIR
--synthetic`` does from the command line. Here the ranking from painted
defects is set beside the ranking on the real defects, which a new product
would not have.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

from skanomaly import make_dfm, make_padim, make_patchcore
from skanomaly.datasets import make_synthetic
from skanomaly.metrics import image_roc_auc
from skanomaly.model_selection import SyntheticDefectScorer

data = make_synthetic(60, 20, image_size=48, random_state=1)
normal = data.images[data.target == 1]
fit_images, held = normal[:30], normal[30:40]
candidates = {
    "PatchCore": make_patchcore(image_size=48, random_state=0),
    "PaDiM": make_padim(image_size=48, random_state=0),
    "DFM": make_dfm(image_size=48, random_state=0),
}

# %%
# Painted defects on held-out good images
# ---------------------------------------
painted, painted_target, _ = SyntheticDefectScorer(random_state=0).validation_set(held)
real_test = np.concatenate([normal[40:], data.images[data.target == -1]])
real_target = np.r_[np.ones(len(normal) - 40), -np.ones(int(np.sum(data.target == -1)))]
rows = []
for name, pipe in candidates.items():
    pipe.fit(fit_images)
    rows.append((name, image_roc_auc(painted_target, pipe.score_samples(painted)),
                 image_roc_auc(real_target, pipe.score_samples(real_test))))
    print(f"{name:10s} painted-defect AUROC {rows[-1][1]:.3f}   real-defect AUROC {rows[-1][2]:.3f}")

# %%
x = np.arange(len(rows))
fig, ax = plt.subplots(figsize=(5, 3))
ax.bar(x - 0.2, [r[1] for r in rows], 0.4, label="painted defects (good images only)")
ax.bar(x + 0.2, [r[2] for r in rows], 0.4, label="real defects")
ax.set_xticks(x, [r[0] for r in rows])
ax.set_ylim(0.5, 1.02)
ax.set_ylabel("image AUROC")
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()
