"""Thresholds a production line acts on: recalibration from labelled images,
the drift warning, and the operating-point metrics."""

import numpy as np
import pytest
from PIL import Image

from skanomaly import make_padim
from skanomaly.calibration import calibrate
from skanomaly.cli import main
from skanomaly.datasets import make_synthetic
from skanomaly.metrics import image_operating_point, pixel_operating_point
from skanomaly_runtime._output import drift_warning


@pytest.fixture(scope="module")
def shifted():
    """A model of normal images, and a production line whose good parts
    came out brighter than the training images (a drift)."""
    data = make_synthetic(150, 40, image_size=32, random_state=3)
    normal, defective = data.images[data.target == 1], data.images[data.target == -1]
    brighter = lambda images: np.clip(images.astype(np.int16) + 40, 0, 255).astype(np.uint8)  # noqa: E731
    pipe = make_padim(image_size=32, random_state=0).fit(normal[:40])
    return pipe, brighter(normal[40:]), brighter(defective)


def test_calibrate_restores_the_false_alarm_rate_after_a_drift(shifted):
    import copy

    pipe, good, defective = shifted
    pipe = copy.deepcopy(pipe)
    # The drift: far more good parts flagged than the 5% promised.
    assert (pipe.predict(good[55:]) == -1).mean() > 0.3
    summary = calibrate(pipe, good[:55], defective[:20], false_alarm_rate=0.1, confidence=0.9)
    assert summary["n_good"] == 55 and pipe[-1].contamination == 0.1
    judged = (pipe.predict(good[55:]) == -1).mean()
    assert judged <= 0.2, judged
    # The drift is recognised: the training calibration is left out.
    assert not summary["pooled"] and summary["drift_p_value"] < 0.05
    # With 90% confidence the threshold flags fewer than the rate on the
    # calibration images themselves; on average, about the rate.
    assert summary["good_flagged"] / 55 < 0.1
    import copy as _copy
    average = calibrate(_copy.deepcopy(shifted[0]), good[:55], false_alarm_rate=0.1)
    assert average["good_flagged"] == int(np.floor(0.1 * 56)) - 1
    assert average["good_flagged"] >= summary["good_flagged"]
    assert 0 <= summary["recall"] <= 1
    # p-values and the pixel threshold follow the new good images.
    assert len(pipe[-1].calibration_scores_) == 55
    assert pipe[-1].calibration_patch_scores_.shape[0] == 55


def test_calibrate_pools_good_images_like_the_training_ones():
    import copy

    data = make_synthetic(120, 0, image_size=32, random_state=4)
    pipe = make_padim(image_size=32, random_state=0).fit(data.images[:60])
    own = len(pipe[-1].calibration_scores_)
    grids = pipe[-1].calibration_patch_scores_.shape[0]
    alike = copy.deepcopy(pipe)
    summary = calibrate(alike, data.images[60:80], false_alarm_rate=0.05)
    # Undrifted: 20 good images join the model's 60 cross-fitted scores.
    assert summary["pooled"] and summary["drift_p_value"] >= 0.05
    assert len(alike[-1].calibration_scores_) == own + 20
    assert alike[-1].calibration_patch_scores_.shape[0] == grids + 20
    # 80 scores set a threshold that flags new good images at about the
    # rate; 20 alone could only take their lowest score.
    alone = copy.deepcopy(pipe)
    summary = calibrate(alone, data.images[60:80], false_alarm_rate=0.05, pool=False)
    assert not summary["pooled"] and len(alone[-1].calibration_scores_) == 20
    assert alone[-1].offset_ == alone[-1].calibration_scores_.min()
    with pytest.raises(ValueError, match="pool"):
        calibrate(copy.deepcopy(pipe), data.images[60:70], pool="sometimes")


def test_calibrate_warns_when_too_few_good_images_for_the_confidence(shifted):
    import copy

    pipe, good, _ = shifted
    pipe = copy.deepcopy(pipe)
    with pytest.warns(UserWarning, match="cannot promise"):
        summary = calibrate(pipe, good[:10], false_alarm_rate=0.05, confidence=0.9)
    assert summary["good_flagged"] == 0
    with pytest.raises(ValueError, match="false_alarm_rate"):
        calibrate(pipe, good[:10], false_alarm_rate=0.9)


def test_calibrate_command_writes_a_recalibrated_model(shifted, tmp_path, capsys):
    from skanomaly.persistence import load_model, save_model

    pipe, good, defective = shifted
    model = save_model(pipe, tmp_path / "model.joblib")
    for folder, images in (("good", good[:50]), ("bad", defective[:10])):
        (tmp_path / folder).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(tmp_path / folder / f"{i:03d}.png")
    out = tmp_path / "line2.joblib"
    code = main(["calibrate", str(model), "--good", str(tmp_path / "good"),
                 "--defective", str(tmp_path / "bad"), "--false-alarm-rate", "0.1",
                 "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "threshold from 50 good images alone" in printed and "a drift" in printed
    assert "of 10 defective" in printed
    recalibrated = load_model(out)
    assert recalibrated[-1].offset_ != pipe[-1].offset_
    assert (recalibrated.predict(good[50:]) == -1).mean() <= 0.2


def test_predict_warns_of_drift(shifted, tmp_path, capsys):
    from skanomaly.persistence import save_model

    pipe, good, _ = shifted
    model = save_model(pipe, tmp_path / "model.joblib")
    (tmp_path / "line").mkdir()
    for i, image in enumerate(good[:40]):
        Image.fromarray(image).save(tmp_path / "line" / f"{i:03d}.png")
    assert main(["predict", str(model), str(tmp_path / "line"), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "far above the 0.05" in err and "skanomaly calibrate" in err


def test_drift_warning_follows_a_binomial_test():
    from scipy.stats import binom

    assert drift_warning(5, 100, 0.05) is None  # what the rate predicts
    # P(X >= 12) = 0.004 is no alarm at the 1e-3 level; P(X >= 15) = 1.4e-4 is.
    assert binom.sf(11, 100, 0.05) > 1e-3 and drift_warning(12, 100, 0.05) is None
    assert binom.sf(14, 100, 0.05) < 1e-3 and drift_warning(15, 100, 0.05) is not None
    assert drift_warning(0, 0, 0.05) is None


def test_operating_point_metrics_by_hand():
    y = np.array([1, 1, 1, 1, -1, -1, -1])
    decision = np.array([0.3, 0.1, -0.2, 0.5, -1.0, -0.1, 0.2])
    point = image_operating_point(y, decision, 0.25)
    assert point["false_alarm_rate"] == 0.25 and point["recall"] == pytest.approx(2 / 3)
    # floor(0.25 * 4) = 1 good image may be flagged: cut at the second
    # lowest good score (0.1), below which two defects lie.
    assert point["oracle_recall"] == pytest.approx(2 / 3)
    truth = np.zeros((20, 20), bool)
    truth[2:8, 2:8] = True
    truth[12:18, 12:18] = True
    amap = np.zeros((20, 20))
    amap[2:8, 2:8] = 1.0  # one region found exactly, the other missed
    good_map = np.zeros((20, 20))
    good_map[5:10, 5:10] = 1.0  # a 25-pixel false alarm on a good image
    point = pixel_operating_point([truth, None], [amap, good_map], 0.5)
    assert point["region_hit_rate"] == 0.5
    assert point["good_with_box"] == 1.0 and point["boxes_per_good"] == 1.0
    tp, fp, fn = 36, 25, 36
    assert point["pixel_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
