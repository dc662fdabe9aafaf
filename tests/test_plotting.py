import numpy as np
import pytest

from skanomaly.plotting import overlay_heatmap


def test_overlay_colours_follow_the_map_and_outline_the_mask():
    image = np.full((16, 16, 3), 0.5)
    amap = np.zeros((16, 16))
    amap[4:12, 4:12] = 1.0
    mask = amap > 0.5
    rgb = overlay_heatmap(image, amap, mask, alpha=0.6)
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    np.testing.assert_array_equal(rgb[0, 0], [128, 128, 128])  # map at vmin: untouched
    np.testing.assert_array_equal(rgb[4, 4], [0, 255, 0])  # mask outline
    inside = rgb[8, 8].astype(int)  # map at vmax: blended towards yellow
    assert inside[0] > 128 and inside[1] > 128 and inside[2] < 128
    with pytest.raises(ValueError, match="does not match"):
        overlay_heatmap(image, np.zeros((4, 4)))


def test_matplotlib_plots_draw_on_given_axes():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skanomaly.plotting import plot_overlay, plot_roc, plot_score_histogram

    fig, axes = plt.subplots(1, 3)
    y = np.array([1, 1, 1, -1, -1])
    scores = np.array([0.9, 0.8, 0.1, 0.2, -1.0])  # 5 of 6 pairs ordered
    assert plot_roc(y, scores, ax=axes[0]) is axes[0]
    assert "0.833" in axes[0].get_legend().get_texts()[0].get_text()
    plot_score_histogram(y, scores, threshold=0.25, ax=axes[1])
    assert len(axes[1].lines) == 1 and axes[1].lines[0].get_xdata()[0] == 0.25
    plot_overlay(np.zeros((8, 8, 3)), np.ones((8, 8)), ax=axes[2], title="x")
    assert axes[2].get_title() == "x" and len(axes[2].images) == 1
    plt.close(fig)


def test_pro_curve_and_worst_grid():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skanomaly.metrics import pixel_aupro
    from skanomaly.plotting import plot_pro_curve, plot_worst

    rng = np.random.default_rng(0)
    masks = rng.random((4, 16, 16)) > 0.9
    maps = rng.random((4, 16, 16)) + masks
    ax = plot_pro_curve(list(masks), list(maps))
    assert f"{pixel_aupro(list(masks), list(maps)):.3f}" in ax.get_legend().get_texts()[0].get_text()
    assert ax.get_xlim() == (0, 0.3)
    images = rng.random((4, 16, 16, 3))
    fig = plot_worst(images, np.array([0.5, -2.0, 0.1, -1.0]), list(maps), list(masks), n=3)
    titles = [a.get_title() for a in fig.axes]
    assert titles == ["score -2.000", "score -1.000", "score 0.100"]
    plt.close("all")
