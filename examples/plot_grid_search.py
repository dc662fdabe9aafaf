"""
GridSearchCV over the coreset ratio
===================================

A skanomaly pipeline is an ordinary scikit-learn estimator, so
``GridSearchCV`` tunes it. ``NormalOnlyKFold`` keeps defective images out
of every training fold (a detector learns from good images only) and
``SyntheticDefectScorer`` scores each fold on painted defects, so no real
defect is needed. Here: how small may PatchCore's memory bank be?
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import GridSearchCV

from skanomaly import make_patchcore
from skanomaly.datasets import make_synthetic
from skanomaly.model_selection import NormalOnlyKFold, SyntheticDefectScorer

data = make_synthetic(30, 0, image_size=48, random_state=3)
ratios = [0.01, 0.1, 0.5]
search = GridSearchCV(
    make_patchcore(image_size=48, random_state=0),
    {"knndetector__coreset_ratio": ratios},
    scoring=SyntheticDefectScorer(random_state=0),
    cv=NormalOnlyKFold(n_splits=2, shuffle=True, random_state=0),
).fit(data.images, data.target)
print("best:", search.best_params_, f"painted-defect AUROC {search.best_score_:.3f}")

# %%
mean = search.cv_results_["mean_test_score"]
std = search.cv_results_["std_test_score"]
fig, ax = plt.subplots(figsize=(5, 3))
ax.errorbar(ratios, mean, yerr=std, marker="o", capsize=3)
ax.set_xscale("log")
ax.set_xlabel("coreset ratio (share of patches kept in the bank)")
ax.set_ylabel("painted-defect AUROC")
fig.tight_layout()
plt.show()
