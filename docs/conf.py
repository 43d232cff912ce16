"""Sphinx configuration of the msam-jax documentation (`sphinx-build -n -W docs docs/_build/html`).

Sphinx, because the JAX libraries our users read (jax, optax, flax) document themselves with
it: myst-parser reads the Markdown pages as they are on GitHub, and autodoc with napoleon renders
the Google-style docstrings without a second copy of anything. The API pages are generated from
each public module's `__all__` (api_reference.py) at the start of every build.

The build is nitpicky (`-n`): every cross-reference must resolve, with two deliberate
exceptions, both in `_code_or_link` below. The docs extra installs no TensorFlow: the modules
that import it are imported with TensorFlow, TFDS and scikit-learn mocked.
"""

import inspect
import os
import pathlib
import sys

from sphinx.domains.python import PyXRefRole
from sphinx.ext.autodoc.mock import mock
from sphinx.util.nodes import make_refnode

DOCS = pathlib.Path(__file__).parent
sys.path.insert(0, str(DOCS.parent))  # this checkout's msam_jax, not an installed one
sys.path.insert(0, str(DOCS))

import api_reference

project = "msam-jax"
author = "msam-jax contributors"
copyright = "2026, msam-jax contributors"

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.intersphinx",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_intersphinx"]
root_doc = "index"

# Docstrings name arguments, expressions and objects alike in single backquotes: render each as
# code, linked when it names a documented object (the `code-or-link` role, `_code_or_link`).
default_role = "code-or-link"
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings say what each argument is; optax's aliases expand unreadably
autodoc_default_options = {"show-inheritance": False}
# The data pipelines import TensorFlow, TFDS and scikit-learn at module level, and clu's metric
# writers TensorFlow and TensorBoard; the reference needs only docstrings, so the docs extra leaves
# them out and they are mocked, here and when api_reference.py imports the modules. Flax, orbax,
# clu and ml_collections are real: the config page runs base_config().
autodoc_mock_imports = ["tensorflow", "tensorflow_datasets", "tensorboard", "sklearn"]
autosummary_generate = False  # the pages are written by api_reference.py, not by autosummary
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = "msam-jax"

# Links into the other projects' documentation. intersphinx reads each project's objects.inv, and
# the CI build has no network: a project's inventory is used when docs/_intersphinx/NAME.inv is
# there (saved from URL/objects.inv), or fetched when MSAM_DOCS_INTERSPHINX=fetch. None is
# committed, so by default names of these projects render as code without a link (`_code_or_link`).
INTERSPHINX = {
  "python": "https://docs.python.org/3",
  "numpy": "https://numpy.org/doc/stable",
  "jax": "https://docs.jax.dev/en/latest",
  "optax": "https://optax.readthedocs.io/en/latest",
  "flax": "https://flax.readthedocs.io/en/latest",
}
FETCH = os.environ.get("MSAM_DOCS_INTERSPHINX") == "fetch"
intersphinx_mapping = {
  name: (url, None if FETCH else str(DOCS / "_intersphinx" / f"{name}.inv"))
  for name, url in INTERSPHINX.items()
  if FETCH or (DOCS / "_intersphinx" / f"{name}.inv").exists()
}
nitpicky = True
# An annotation names a class where it is defined (optax._src.base.GradientTransformation), a
# private module no project's inventory lists.
nitpick_ignore_regex = [(r"py:class", r"(jax|jaxlib|optax|flax)\._src\..*")]
if "numpy" not in intersphinx_mapping:  # an annotation's numpy.ndarray: a link only with numpy's inventory
  nitpick_ignore_regex.append((r"py:class", r"numpy\..*"))


class CodeOrLinkRole(PyXRefRole):
  """`name`: a Python cross-reference (`py:obj`) marked so that `_code_or_link` may make it code."""

  def run(self):
    self.name = "py:obj"
    return super().run()

  def result_nodes(self, document, env, node, is_ref):
    node["code_or_link"] = True
    return super().result_nodes(document, env, node, is_ref)


_LINKABLE = ("function", "class", "exception", "module", "data")


def _code_or_link(app, env, node, contnode):
  """Resolves a single-backquoted name that neither the Python domain nor intersphinx did.

  1. A dotted name that is the end of exactly one documented msam_jax object
     (`schedules.gsam_rho`): a link to it.
  2. A public function, class or constant of the API (a name in a public module's `__all__`),
     bare or behind its defining module (`sgd`, `state_utils.needs_loss_fn`): a link to it. Not
     modules, nor the members of an exported submodule: bare, those are usually arguments or
     config fields (`label_noise`, `split`).
  3. It names msam_jax (`msam_jax.optim.msam_of`) and matched nothing: left unresolved, so the
     nitpicky build fails on the typo.
  4. It names an object of a project in `intersphinx_mapping` (`optax.chain` with optax's
     inventory present): left unresolved, so a name that project lacks fails the build.
  5. Anything else is code: an argument (`params`), an expression (`rho/||v||`), the original's
     class names (`MSAM`), or another project's object without an inventory here (`jax.jit`).
  """
  if not node.get("code_or_link"):
    return None
  target = node["reftarget"].lstrip("~.")
  objects = env.domains.python_domain.objects
  found = []
  if "." in target:
    found = [n for n, e in objects.items() if n.endswith("." + target) and e.objtype in _LINKABLE and not e.aliased]
  if not found:
    first, _, last = target.rpartition(".")
    if not first or any(m.rpartition(".")[2] == first for m in sys.modules if m.startswith("msam_jax.")):
      found = sorted({f"{m}.{last}" for m in api_reference.PUBLIC_MODULES if last in _api_names(m)} & set(objects))
  if len(found) == 1:
    entry = objects[found[0]]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, found[0])
  if target.startswith("msam_jax"):
    return None
  if target.split(".")[0] in intersphinx_mapping:  # jax.jit with jax's inventory present
    return None
  return contnode


def _api_names(module_name: str) -> set[str]:
  """The public names of a module that are functions, classes or constants (not modules)."""
  module = sys.modules[module_name]
  return {n for n in api_reference.public_names(module_name) if not inspect.ismodule(getattr(module, n))}


# The example gallery (docs/examples/*.ipynb, rendered by myst-nb). Each notebook is its jupytext
# script executed once, outputs committed, and never executed by the build ("off"): the full example
# trains for minutes, while the build stays seconds long and needs no kernel, and
# tests/examples/test_gallery.py runs each script in a reduced form and checks that the committed
# notebook holds the script's cells, executed at full length.
extensions.append("myst_nb")  # after myst_parser, whose .md parsing it takes over
nb_execution_mode = "off"


def _write_api_pages(app):
  with mock(autodoc_mock_imports):
    api_reference.write_pages(DOCS / "api")


def setup(app):
  app.add_role("code-or-link", CodeOrLinkRole())
  app.connect("builder-inited", _write_api_pages)
  app.connect("missing-reference", _code_or_link, priority=900)  # after intersphinx (500)
