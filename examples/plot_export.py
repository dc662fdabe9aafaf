"""
Export to ONNX and score without torch
======================================

``to_onnx`` writes the whole fitted pipeline (backbone, patch pooling, the
bank search, the map's upsampling and blur) as one ONNX graph, with the
thresholds in its metadata. On the line PC, ``skanomaly_runtime`` needs
only numpy, Pillow and onnxruntime, and loads no code from the file. Its
scores are the estimator's.
"""

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import skanomaly_runtime
from skanomaly import make_patchcore
from skanomaly.datasets import make_synthetic
from skanomaly.export import to_onnx

data = make_synthetic(36, 10, image_size=64, random_state=4)
pipe = make_patchcore(image_size=64, random_state=0).fit(data.images[:26])
path = to_onnx(pipe, Path(tempfile.mkdtemp()) / "patchcore.onnx")
print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB")

# %%
# The runtime gives what the estimator gives
# ------------------------------------------
model = skanomaly_runtime.load(path)
test = data.images[26:]
ours, theirs = pipe.score_samples(test), model.score_samples(test)
print(f"largest relative difference {np.max(np.abs(ours - theirs) / np.abs(ours)):.1e}")
print("same labels:", bool(np.array_equal(pipe.predict(test), model.predict(test))))
fig, ax = plt.subplots(figsize=(3.6, 3.4))
ax.scatter(ours, theirs, c=np.where(data.target[26:] == 1, "tab:green", "tab:red"))
ax.axline((ours[0], ours[0]), slope=1, color="k", lw=0.5)
ax.set_xlabel("estimator (torch) score")
ax.set_ylabel("ONNX runtime score")
fig.tight_layout()
plt.show()
