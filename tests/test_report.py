"""The HTML report: its curves are the metrics' curves, it stands alone, and
it is written whole or not at all."""

import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from skanomaly.datasets import make_synthetic
from skanomaly.metrics import pixel_aupro
from skanomaly.report import N_HARD, summarize_result, write_report


@pytest.fixture(scope="module")
def case():
    """Test images with masks, scores that separate them imperfectly, and maps
    that light up around each defect."""
    data = make_synthetic(8, 12, image_size=32, random_state=0)
    rng = np.random.default_rng(0)
    target = data.target
    scores = np.where(target == 1, 1.0, -1.0) + rng.normal(0, 1.2, len(target))
    maps = [
        (np.asarray(m, float) if m is not None else np.zeros((32, 32))) + rng.random((32, 32)) * 0.5
        for m in data.masks
    ]
    return data, scores, maps


def _area_under(points):
    x, y = map(np.asarray, points)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def test_the_summary_curves_are_the_metrics_curves(case):
    data, scores, maps = case
    s = summarize_result("m", {"scores": scores, "maps": maps, "image_auroc": 0.5},
                         data.images, data.target, data.masks, data.defect_type)
    assert _area_under(s["roc"]) == pytest.approx(roc_auc_score(data.target, scores))
    # AUPRO is the PRO curve's area up to FPR 0.3, normalised by 0.3.
    fpr, pro = map(np.asarray, s["pro"])
    assert fpr.max() <= 0.3
    assert _area_under(s["pro"]) / 0.3 == pytest.approx(pixel_aupro(data.masks, maps), abs=0.02)
    assert set(s["per_type"]) == set(np.asarray(data.defect_type)[data.target == -1])
    kinds = [h["kind"] for h in s["hard"]]
    assert kinds == ["good"] * N_HARD + ["defect"] * N_HARD
    # The hardest good images are the least normal ones.
    worst_good = np.sort(-scores[data.target == 1])[::-1][:N_HARD]
    assert [h["anomaly_score"] for h in s["hard"][:N_HARD]] == pytest.approx(worst_good)


def test_one_page_compares_methods_and_needs_nothing_outside_it(case, tmp_path):
    data, scores, maps = case
    with_maps = summarize_result("mapper", {"scores": scores, "maps": maps}, data.images,
                                 data.target, data.masks, data.defect_type)
    image_level = summarize_result("scorer", {"scores": -scores}, data.images, data.target)
    page = write_report(tmp_path / "sub" / "r.html", [with_maps, image_level],
                        title="t <&>", description="two methods").read_text()
    assert page.count('<section class="method">') == 2
    assert "t &lt;&amp;&gt;" in page  # escaped
    # ROC: one polyline per method; PRO: only the method with maps.
    charts = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert charts[0].count("<polyline") == 2 and charts[1].count("<polyline") == 1
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    assert page.count("<figure>") == 4 * N_HARD


def test_bad_input_is_refused_and_nothing_half_written(case, tmp_path, monkeypatch):
    data, scores, _ = case
    with pytest.raises(ValueError, match="mine: 3 scores"):
        summarize_result("mine", {"scores": scores[:3]}, data.images, data.target)
    with pytest.raises(ValueError, match="at least one"):
        write_report(tmp_path / "r.html", [])
    summary = summarize_result("m", {"scores": scores}, data.images, data.target)

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path / "r.html", [summary])
    assert list(tmp_path.iterdir()) == []
