"""Shared by the benchmark scripts: the panel, the methods, where results go."""

import json
import sys
from pathlib import Path


def save_json(obj, path):
    """Write ``obj`` as indented JSON to ``path``, creating its folder; a
    dict gains ``environment`` (date, CPU, threads, library versions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, dict):
        obj = {**obj, "environment": environment()}
    path.write_text(json.dumps(obj, indent=2))

# The shared panel: ../shared/data beside the repository, and its sets.
PANEL_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SETS = ("mvtec_bottle", "mvtec3d_tire", "mvtec_screw", "kolektorsdd")


def factories(trained=None):
    """Registered method names -> factories (``trained=False``: no training loop)."""
    from skanomaly import available_methods

    return {name: info.factory for name, info in available_methods(trained=trained).items()}


def panel_sets(data, sets):
    """``(name, root)`` of each named set under ``data`` that exists (MVTec
    layout); the others are reported on stderr and skipped."""
    for name in sets.split(","):
        root = Path(data) / name
        if not (root / "train").is_dir():
            print(f"skipping {root}: not found", file=sys.stderr)
            continue
        yield name, root


RESULTS = Path(__file__).resolve().parent / "results"


def environment():
    """What a figure depends on besides the code: written into every results file."""
    import datetime
    import os
    import platform

    import numpy
    import sklearn
    import torch

    import skanomaly

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "skanomaly": skanomaly.__version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


def _cell(value, spec=".2f"):
    return "-" if value is None or value != value else format(value, spec)


def operating_point_table(rows):
    """The user guide's table of what each method's own thresholds do."""
    order = {name: i for i, name in enumerate(SETS)}
    head = ("| method | set | good flagged | defects flagged (best at 5%) | image AUROC | "
            "pixel AUROC | AUPRO | pixel F1 (best) | good images with a box | defect regions boxed | "
            "recalibrated on half: good flagged | defects flagged (best) | "
            "alone: good flagged | defects flagged |\n" + "|---" * 14 + "|\n")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = []
    for r in sorted(rows, key=lambda r: (methods.index(r["method"]), order.get(r["set"], 99))):
        lines.append(
            f"| {r['method']} | {r['set']} | {_cell(r['false_alarm_rate'])} | "
            f"{_cell(r['recall'])} ({_cell(r['oracle_recall'])}) | {_cell(r['image_auroc'])} | "
            f"{_cell(r.get('pixel_auroc'), '.3f')} | {_cell(r.get('aupro'), '.3f')} | "
            f"{_cell(r['pixel_f1'])} ({_cell(r['best_pixel_f1'])}) | {_cell(r['good_with_box'])} | "
            f"{_cell(r['region_hit_rate'])} | {_cell(r['cal_false_alarm_rate'])} | "
            f"{_cell(r['cal_recall'])} ({_cell(r['cal_oracle_recall'])}) | "
            f"{_cell(r.get('alone_false_alarm_rate'))} | {_cell(r.get('alone_recall'))} |")
    return head + "\n".join(lines) + "\n"


def _evaluate_memory_table(result):
    head = "| method | image AUROC | pixel AUROC | AUPRO | good flagged | defects flagged | pixel F1 | peak RSS MB |\n" + "|---" * 8 + "|\n"
    lines = [f"| {r['method']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['aupro']:.3f} | "
             f"{r['false_alarm_rate']:.2f} | {r['recall']:.2f} | {r['pixel_f1']:.2f} | {r['peak_rss_mb']:.0f} |"
             for r in result["results"]]
    return (f"`{result['command']}` ({result['machine']}); the process's peak RSS "
            f"after each method, {result['max_rss_mb_time_v']:.0f} MB at the end:\n\n"
            + head + "\n".join(lines) + "\n")


def results_tables():
    """Markdown tables for the documentation, from the committed results
    files: ``{name: table}``, each empty of figures when its file is absent."""
    tables = {}
    path = RESULTS / "operating_point.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    commands = sorted({r["command"] for r in rows})
    tables["operating_point"] = (operating_point_table(rows) + "\n" + "Commands: "
                                 + "; ".join(f"`{c}`" for c in commands) + ".\n")
    path = RESULTS / "evaluate_memory.json"
    tables["evaluate_memory"] = (_evaluate_memory_table(json.loads(path.read_text()))
                                 if path.exists() else "(no results file)\n")
    return tables


def headline_table(rows):
    """The README's table: per method, image AUROC over the panel (mean and
    worst set) and what its own threshold does (mean over the sets)."""
    by_method = {}
    for r in rows:
        if r.get("seed", 0) == 0:
            by_method.setdefault(r["method"], []).append(r)
    lines = ["| method | mean image AUROC | worst set | good parts flagged (asked 5%) | defects flagged |",
             "|---|---|---|---|---|"]
    for method, got in sorted(by_method.items(), key=lambda kv: -sum(r["image_auroc"] for r in kv[1])):
        if len(got) < len(SETS):
            continue  # only methods measured on the whole panel
        auroc = [r["image_auroc"] for r in got]
        worst = min(got, key=lambda r: r["image_auroc"])
        lines.append(f"| {method} | {sum(auroc) / len(auroc):.3f} | {worst['image_auroc']:.3f} "
                     f"({worst['set']}) | {sum(r['false_alarm_rate'] for r in got) / len(got):.2f} | "
                     f"{sum(r['recall'] for r in got) / len(got):.2f} |")
    return "\n".join(lines) + "\n"


def _methods_table():
    from skanomaly.registry import _markdown_table

    return _markdown_table()


README_BLOCKS = {
    "methods": _methods_table,
    "headline": lambda: headline_table(json.loads((RESULTS / "operating_point.json").read_text())["rows"]),
}


def _block_span(text, name):
    start, end = f"<!-- {name}: generated -->\n", f"<!-- /{name} -->"
    return text.index(start) + len(start), text.index(end)


def readme_block(text, name):
    """The generated part of the README between its ``<!-- name -->`` markers."""
    start, end = _block_span(text, name)
    return text[start:end]


def update_readme(path=Path(__file__).resolve().parent.parent / "README.md"):
    """Write the generated blocks into the README (``python benchmarks/_results.py``)."""
    text = path.read_text()
    for name, make in README_BLOCKS.items():
        start, end = _block_span(text, name)
        text = text[:start] + make() + text[end:]
    path.write_text(text)


if __name__ == "__main__":
    update_readme()
