"""Sphinx configuration: builds offline, warnings are errors in the test suite."""

project = "skanomaly"
author = "skanomaly developers"
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
master_doc = "contents"
exclude_patterns = ["_build"]
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
html_theme = "alabaster"
suppress_warnings = ["myst.header"]

# The method tables come from the one registry (skanomaly.registry): written
# here at every build, included by index.md and api.rst.
from pathlib import Path as _Path

from skanomaly.export import _markdown_table as _export_table
from skanomaly.registry import _markdown_table, available_methods

_generated = _Path(__file__).resolve().parent / "_generated"
_generated.mkdir(exist_ok=True)
(_generated / "methods.md").write_text(_markdown_table())
(_generated / "export.md").write_text(_export_table())
(_generated / "factories.rst").write_text("".join(
    f".. autofunction:: skanomaly.{info.factory.__name__}\n" for info in available_methods().values()))
exclude_patterns.append("_generated")


def _skip_metadata_request_setters(app, what, name, obj, skip, options):
    # scikit-learn generates set_fit_request & co. for a fit that takes
    # more than X and y; their docstrings link into scikit-learn's glossary.
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_request_setters)
