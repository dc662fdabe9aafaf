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
