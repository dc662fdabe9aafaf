"""Sphinx configuration: builds offline, warnings are errors in the test suite.

The method tables come from the one registry, the benchmark tables from the
committed files in ``benchmarks/results/``, and the gallery from
``examples/plot_*.py``, run at each build: a figure and its source cannot
disagree.
"""

import sys
from pathlib import Path as _Path

project = "skanomaly"
author = "skanomaly developers"
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_design",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "generated/*.examples"]
autosummary_generate = True
autodoc_default_options = {
    "members": True,
    # What scikit-learn, the standard library's server and the Pipeline
    # base give is documented there, not here.
    "inherited-members": "BaseEstimator,ThreadingHTTPServer,Pipeline",
}
autodoc_typehints = "none"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

html_theme = "pydata_sphinx_theme"
html_title = "skanomaly"
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_sidebars = {"index": [], "benchmarks": []}

_ROOT = _Path(__file__).resolve().parent.parent
sphinx_gallery_conf = {
    "examples_dirs": str(_ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"plot_",
    "ignore_pattern": r"^(?!.*plot_)",  # the other scripts run in the test suite instead
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "within_subsection_order": "FileNameSortKey",
}

# Generated at every build: the method and export tables from the registry,
# the benchmark tables from the committed results.
from skanomaly.export import _markdown_table as _export_table  # noqa: E402
from skanomaly.registry import _markdown_table, available_methods  # noqa: E402

sys.path.insert(0, str(_ROOT / "benchmarks"))
from _results import results_tables  # noqa: E402

_generated = _Path(__file__).resolve().parent / "_generated"
_generated.mkdir(exist_ok=True)
(_generated / "methods.md").write_text(_markdown_table())
(_generated / "export.md").write_text(_export_table())
(_generated / "factories.rst").write_text(
    ".. currentmodule:: skanomaly\n\n.. autosummary::\n   :toctree: generated\n   :nosignatures:\n\n"
    + "".join(f"   {info.factory.__name__}\n" for info in available_methods().values()))
# The factories' autosummary lives in an included file, which autosummary
# does not scan: their pages are written here, as it would write them.
(_Path(__file__).resolve().parent / "generated").mkdir(exist_ok=True)
for _info in available_methods().values():
    _factory = _info.factory.__name__
    _title = f"skanomaly.{_factory}".replace("_", r"\_")
    (_Path(__file__).resolve().parent / "generated" / f"skanomaly.{_factory}.rst").write_text(
        f"{_title}\n{'=' * len(_title)}\n\n.. currentmodule:: skanomaly\n\n.. autofunction:: {_factory}\n")
for _name, _table in results_tables().items():
    (_generated / f"{_name}.md").write_text(_table)


def _skip_scikit_learns_members(app, what, name, obj, skip, options):
    # What scikit-learn's mixins add (set_output, get_metadata_routing, the
    # set_fit_request & co. it generates for a fit that takes more than X
    # and y) is documented there; their docstrings link into its glossary.
    if name.startswith("set_") and name.endswith("_request"):
        return True
    if getattr(obj, "__module__", "") and obj.__module__.startswith("sklearn."):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_scikit_learns_members)
