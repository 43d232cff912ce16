"""Sphinx configuration of the msam-jax documentation (`sphinx-build -W docs docs/_build/html`).

Sphinx, because the JAX libraries our users read (jax, optax, flax) document themselves with
it: myst-parser reads the Markdown pages as they are on GitHub, and autodoc with napoleon renders
the Google-style docstrings without a second copy of anything. The API pages are generated from
each public module's `__all__` (api_reference.py) at the start of every build.
"""

import pathlib
import sys

DOCS = pathlib.Path(__file__).parent
sys.path.insert(0, str(DOCS.parent))  # this checkout's msam_jax, not an installed one
sys.path.insert(0, str(DOCS))

import api_reference  # noqa: E402

project = "msam-jax"
author = "msam-jax contributors"
copyright = "2026, msam-jax contributors"

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# Docstrings name arguments and functions in single backquotes: render them as code, linked when
# they name a documented object.
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings say what each argument is; optax's aliases expand unreadably
autodoc_default_options = {"show-inheritance": False}
autosummary_generate = False  # the pages are written by api_reference.py, not by autosummary
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = "msam-jax"

# The example gallery (docs/examples/*.ipynb, rendered by myst-nb). Each notebook is its jupytext
# script executed once, outputs committed, and never executed by the build ("off"): the full example
# trains for minutes, while the build stays seconds long and needs no kernel, and
# tests/examples/test_gallery.py runs each script in a reduced form and checks that the committed
# notebook holds the script's cells, executed at full length.
extensions.append("myst_nb")  # after myst_parser, whose .md parsing it takes over
nb_execution_mode = "off"


def _write_api_pages(app):
  api_reference.write_pages(DOCS / "api")


def setup(app):
  app.connect("builder-inited", _write_api_pages)
