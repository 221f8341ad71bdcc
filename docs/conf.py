"""Sphinx configuration: `sphinx-build -W -b html docs docs/_build/html`."""

from __future__ import annotations

import inspect
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import optax_rmsprop  # noqa: E402
from optax_rmsprop import compat, recipes  # noqa: E402

project = "optax_rmsprop"
author = "The optax_rmsprop authors"
copyright = "2026, The optax_rmsprop authors"  # noqa: A001
release = optax_rmsprop.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "sphinx_book_theme"
html_title = "optax_rmsprop"
html_theme_options = {"show_toc_level": 2}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
nitpicky = False
suppress_warnings = ["myst.header"]


def public_symbols() -> list[str]:
    """Every public name a user can reach: the package, compat and recipes."""
    names = [f"optax_rmsprop.{n}" for n in optax_rmsprop.__all__ if n not in ("compat", "recipes")]
    names += [f"optax_rmsprop.compat.{n}" for n in compat.__all__]
    names += [
        f"optax_rmsprop.recipes.{n}"
        for n, obj in vars(recipes).items()
        if inspect.isfunction(obj) and not n.startswith("_") and obj.__module__ == recipes.__name__
    ]
    return names


def check_api_coverage(app) -> None:
    """Fail the build when a public symbol is missing from api.rst."""
    with open(os.path.join(app.srcdir, "api.rst")) as f:
        text = f.read()
    missing = [n for n in public_symbols() if f":: {n}\n" not in text]
    if missing:
        raise RuntimeError(f"api.rst does not document: {', '.join(missing)}")


def setup(app):
    app.connect("builder-inited", check_api_coverage)
