"""A self-contained HTML report of one or several methods on a labelled test set.

What ``skanomaly evaluate`` and ``skanomaly demo`` write as ``report.html``:
a table comparing the methods; their ROC curves and, where masks exist,
their PRO curves on one chart each; per method, the histogram of anomaly
scores of normal and defective images with the threshold, the image AUROC
per defect type, and the hardest images (the normal ones that look least
normal, the defects that look most normal) with their anomaly maps. Charts
are inline SVG and images PNG data URLs, so the page opens from disk in any
browser, without a server, matplotlib or network.

Build it in two steps, so that a long comparison keeps only small summaries
in memory: :func:`summarize_result` per method (while its maps exist), then
:func:`write_report` once.
"""

import html
import os
from pathlib import Path

import numpy as np

__all__ = ["summarize_result", "write_report"]

# Hardest normal and hardest defective images shown per method.
N_HARD = 4
# Points kept per curve (the page stays small on millions of pixels).
_CURVE_POINTS = 300
# Colours of the methods' curves, in table order.
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
            "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
# The region of the PRO curve that AUPRO integrates (MVTec AD's definition).
_PRO_MAX_FPR = 0.3
# A method's measurements as evaluate's table and the report show them:
# (key of evaluate_pipeline's result, title, format spec).
_METRIC_COLUMNS = (
    ("image_auroc", "image AUROC", ".4f"),
    ("pixel_auroc", "pixel AUROC", ".4f"),
    ("aupro", "AUPRO", ".4f"),
    ("f1_max", "F1-max", ".4f"),
    # At the model's own thresholds: what the line acts on.
    ("false_alarm_rate", "good flagged", ".2f"),
    ("recall", "defects flagged", ".2f"),
    ("oracle_recall", "best at that rate", ".2f"),
    ("pixel_f1", "pixel F1", ".3f"),
    ("good_with_box", "good w/ box", ".2f"),
    ("fit_s", "fit s", ".1f"),
    ("ms_per_image", "ms/image", ".1f"),
)


def _thin(x, y, n=_CURVE_POINTS):
    """At most ``n`` points of a monotone curve, its ends kept."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) <= n:
        return x.tolist(), y.tolist()
    keep = np.unique(np.linspace(0, len(x) - 1, n).round().astype(int))
    return x[keep].tolist(), y[keep].tolist()


def _png(rgb, side=256):
    from PIL import Image

    from .plotting import _png_data_url

    image = Image.fromarray(rgb)
    image.thumbnail((side, side))
    return _png_data_url(np.asarray(image))


def summarize_result(method, result, images, target, masks=None, defect_types=None):
    """What the report shows of one method, computed while its maps exist.

    Parameters
    ----------
    method : str
        The method's name in the report.
    result : dict
        From :func:`skanomaly.evaluation.evaluate_pipeline` with
        ``return_maps=True`` (``scores``: decision values, higher = more
        normal, the threshold at 0; ``maps``: anomaly maps or None;
        ``pro_curve``, else it is computed from ``maps``), plus any
        metrics (``image_auroc``, ``pixel_auroc``, ``aupro``, ``f1_max``,
        ``fit_s``, ``ms_per_image``).
    images : list of images
        The test images, in the order of the scores.
    target : array-like of +1 / -1
    masks : list of (path, array or None) or None, default=None
        Ground-truth masks (for the PRO curve and the outlines).
    defect_types : sequence of str or None, default=None
        Each test image's defect type, for the per-type table.

    Returns
    -------
    summary : dict
        Small: metrics, curve points, histogram values, per-type AUROC and
        the hardest images as PNG data URLs.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.report import summarize_result
    >>> images = np.zeros((4, 16, 16, 3))
    >>> s = summarize_result("m", {"scores": np.array([1.0, 0.5, -1.0, -2.0])},
    ...                      images, [1, 1, -1, -1])
    >>> s["roc"][1][-1], len(s["hard"])
    (1.0, 4)
    """
    from sklearn.metrics import roc_curve

    from .images import load_image
    from .metrics import _load_mask, per_defect_type, pro_curve
    from .plotting import overlay_heatmap

    scores = np.asarray(result["scores"], dtype=float)
    target = np.asarray(target)
    if len(scores) != len(target) or len(images) != len(target):
        raise ValueError(f"{method}: {len(scores)} scores, {len(images)} images and "
                         f"{len(target)} labels; they must match.")
    maps = result.get("maps")
    summary = {"method": method,
               **{k: float(result[k]) for k, _, _ in _METRIC_COLUMNS if k in result}}
    fpr, tpr, _ = roc_curve(target == -1, -scores)
    summary["roc"] = _thin(fpr, tpr)
    summary["scores_normal"] = (-scores[target == 1]).tolist()
    summary["scores_defective"] = (-scores[target == -1]).tolist()
    summary["per_type"] = (per_defect_type(target, scores, defect_types)
                           if defect_types is not None and (target == -1).any() else {})
    has_masks = maps is not None and masks is not None and any(m is not None for m in masks)
    summary["pro"] = None
    if has_masks:
        fpr, pro = result["pro_curve"] if "pro_curve" in result else pro_curve(masks, maps)
        inside = fpr <= _PRO_MAX_FPR
        summary["pro"] = _thin(fpr[inside], pro[inside])
    normal_first = [i for i in np.argsort(scores) if target[i] == 1][:N_HARD]
    defect_last = [i for i in np.argsort(-scores) if target[i] == -1][:N_HARD]
    vmax = max((float(np.max(maps[i])) for i in normal_first + defect_last), default=1.0) \
        if maps is not None else None
    hard = []
    for i in normal_first + defect_last:
        rgb = load_image(images[i], int(i))
        if maps is not None:
            truth = _load_mask(masks[i], maps[i].shape) if masks is not None else None
            rgb = overlay_heatmap(rgb, maps[i], truth, vmin=0.0, vmax=vmax)
        else:
            rgb = (rgb * 255).round().astype(np.uint8)
        name = os.path.basename(images[i]) if isinstance(images[i], (str, os.PathLike)) else f"#{i}"
        hard.append({"kind": "good" if target[i] == 1 else "defect", "name": name,
                     "anomaly_score": float(-scores[i]), "image": _png(rgb)})
    summary["hard"] = hard
    return summary


def _axes_svg(width, height, xmax, ymax, xlabel, ylabel, body, pad=40):
    """An SVG chart frame with ticks at quarters of ``xmax`` and ``ymax``,
    around ``body`` (SVG elements already in pixel coordinates)."""
    ticks = []
    for k in range(5):
        fx, fy = pad + k * (width - 2 * pad) / 4, height - pad - k * (height - 2 * pad) / 4
        ticks.append(f'<text x="{fx:.1f}" y="{height - pad + 14}" font-size="10" '
                     f'text-anchor="middle">{xmax * k / 4:.3g}</text>')
        ticks.append(f'<text x="{pad - 4}" y="{fy + 3:.1f}" font-size="10" '
                     f'text-anchor="end">{ymax * k / 4:.3g}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" '
        'fill="none" stroke="#888"/>' + "".join(ticks) + body +
        f'<text x="{width / 2}" y="{height - 6}" font-size="11" text-anchor="middle">'
        f'{html.escape(xlabel)}</text>'
        f'<text x="12" y="{height / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {height / 2})">{html.escape(ylabel)}</text></svg>'
    )


def _curves_svg(series, xmax, xlabel, ylabel, width=380, height=300, pad=40):
    def xy(x, y):
        return (pad + x / xmax * (width - 2 * pad), height - pad - y * (height - 2 * pad))

    body = []
    for k, (name, (xs, ys)) in enumerate(series):
        colour = _COLOURS[k % len(_COLOURS)]
        points = " ".join("%.1f,%.1f" % xy(x, y) for x, y in zip(xs, ys))
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{points}"/>')
        body.append(f'<text x="{pad + 6}" y="{pad + 14 + 13 * k}" font-size="11" fill="{colour}">'
                    f'{html.escape(name)}</text>')
    return _axes_svg(width, height, xmax, 1.0, xlabel, ylabel, "".join(body), pad)


def _histogram_svg(normal, defective, width=400, height=220, pad=40, bins=30):
    values = np.concatenate([normal, defective, [0.0]])
    lo, hi = float(values.min()), float(values.max())
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(v, edges)[0] for v in (normal, defective)]
    top = max(1, max(int(c.max()) for c in counts if len(c)))

    def x_of(v):
        return pad + (v - lo) / (hi - lo) * (width - 2 * pad)

    body = []
    for count, colour in zip(counts, ("#2ca02c", "#d62728")):
        for j, c in enumerate(count):
            if c:
                h = c / top * (height - 2 * pad)
                body.append(f'<rect x="{x_of(edges[j]):.1f}" y="{height - pad - h:.1f}" '
                            f'width="{x_of(edges[j + 1]) - x_of(edges[j]):.1f}" height="{h:.1f}" '
                            f'fill="{colour}" fill-opacity="0.5"/>')
    body.append(f'<line x1="{x_of(0.0):.1f}" x2="{x_of(0.0):.1f}" y1="{pad}" y2="{height - pad}" '
                'stroke="#000" stroke-dasharray="4 3"/>')
    body.append(f'<text x="{x_of(0.0) + 3:.1f}" y="{pad + 12}" font-size="10">threshold</text>')
    body.append(f'<text x="{width - pad - 4}" y="{pad + 12}" font-size="10" fill="#2ca02c" '
                'text-anchor="end">normal</text>'
                f'<text x="{width - pad - 4}" y="{pad + 25}" font-size="10" fill="#d62728" '
                'text-anchor="end">defective</text>')
    frame = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
             f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" '
             'fill="none" stroke="#888"/>'
             f'<text x="{pad}" y="{height - pad + 14}" font-size="10">{lo:.3g}</text>'
             f'<text x="{width - pad}" y="{height - pad + 14}" font-size="10" '
             f'text-anchor="end">{hi:.3g}</text>'
             f'<text x="{width / 2}" y="{height - 6}" font-size="11" text-anchor="middle">'
             'anomaly score (flagged right of the dashed threshold)</text>'
             f'<text x="{pad - 4}" y="{pad + 3}" font-size="10" text-anchor="end">{top}</text>')
    return frame + "".join(body) + "</svg>"


def _fmt(summary, key, spec):
    value = summary.get(key)
    return "-" if value is None or np.isnan(value) else format(value, spec)


def write_report(path, summaries, *, title="skanomaly report", description=""):
    """Write the HTML report of one or several methods' summaries.

    Parameters
    ----------
    path : str or path-like
        The ``.html`` file to write (its folder is created). It is written
        under a temporary name and renamed: never half a page.
    summaries : list of dict
        From :func:`summarize_result`, one per method, in table order.
    title : str, default="skanomaly report"
    description : str, default=""
        A line under the title (the data, the split).

    Returns
    -------
    path : Path

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from skanomaly.report import summarize_result, write_report
    >>> s = summarize_result("m", {"scores": np.array([1.0, -1.0]), "image_auroc": 1.0},
    ...                      np.zeros((2, 8, 8, 3)), [1, -1])
    >>> page = write_report(tempfile.mkdtemp() + "/report.html", [s])
    >>> "ROC" in page.read_text()
    True
    """
    if not summaries:
        raise ValueError("write_report needs at least one method's summary.")
    head = "".join(f"<th>{title}</th>" for _, title, _ in _METRIC_COLUMNS)
    rows = "".join(
        f"<tr><td>{html.escape(s['method'])}</td>"
        + "".join(f"<td>{_fmt(s, key, spec)}</td>" for key, _, spec in _METRIC_COLUMNS) + "</tr>"
        for s in summaries
    )
    charts = [_curves_svg([(s["method"], s["roc"]) for s in summaries], 1.0,
                          "false-positive rate (normal images flagged)", "true-positive rate")]
    pro = [(s["method"], s["pro"]) for s in summaries if s.get("pro")]
    if pro:
        charts.append(_curves_svg(pro, _PRO_MAX_FPR, "false-positive rate (normal pixels)",
                                  "per-region overlap"))
    sections = []
    for s in summaries:
        types = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
                        for k, v in s["per_type"].items())
        tiles = "".join(
            f'<figure><img src="{h["image"]}" alt="{html.escape(h["name"])}">'
            f'<figcaption>{h["kind"]}: {html.escape(h["name"])}<br>anomaly score '
            f'{h["anomaly_score"]:.3f}</figcaption></figure>'
            for h in s["hard"]
        )
        sections.append(
            f'<section class="method"><h2>{html.escape(s["method"])}</h2>'
            f'<div class="row">{_histogram_svg(s["scores_normal"], s["scores_defective"])}'
            + (f'<table class="types"><tr><th>defect type</th><th>image AUROC</th></tr>{types}</table>'
               if types else "")
            + '</div><h3>Hardest images</h3><p>First the normal images that look least '
              'normal, then the defects that look most normal; heatmap: anomaly map (one '
              'scale per method), green: true defect outline.</p>'
            + tiles + "</section>"
        )
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse}} th,td{{padding:3px 12px;border-bottom:1px solid #ddd;text-align:right}}
td:first-child,th:first-child{{text-align:left}} .row{{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}}
figure{{display:inline-block;margin:6px;font-size:.85em}} figure img{{max-width:220px}}
section.method{{border-top:2px solid #ccc;margin-top:1.5em}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(description)}</p>
<table id="comparison"><tr><th>method</th>{head}</tr>{rows}</table>
<h2>ROC{' and PRO' if pro else ''} curves</h2><div class="row">{''.join(charts)}</div>
{''.join(sections)}
</body></html>"""
    from .persistence import _written_in_one_go

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _written_in_one_go(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path
