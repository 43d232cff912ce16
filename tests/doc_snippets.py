"""The code blocks of README.md and docs/*.md, for the tests that run them.

Each page's ```python blocks run in order in one namespace, as a reader pastes them, under the
install the page names: `CORE_PAGES` (the library's pages) under the core install (jax, optax,
numpy), every other page under the full one. tests/optim/test_doc_snippets.py runs the core pages'
blocks (so CI's core-install stage runs them without Flax or TensorFlow); tests/test_docs.py runs
the rest. A block on a core page that needs an extra says so on the line above its fence, with an
HTML comment (invisible on GitHub and on the site): ``<!-- needs: models -->``.

Fence languages: ``python`` runs; ``bash`` is checked, not run (tests/test_docs.py: the scripts,
configs, config fields and extras it names exist); ``text`` is not code (a file tree, a diagram,
printed output) and ``bibtex`` is a citation; MyST directives (``{toctree}``, ``{include}``) are the
site's structure. A fence without a language fails the test: say which of these it is.
"""

import pathlib
import re
import sys
from typing import NamedTuple

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The pages about the optimizers and the analysis tools: the core install runs their snippets.
CORE_PAGES = ("README.md", "docs/getting_started.md", "docs/optimizers.md", "docs/algorithms.md", "docs/sharpness.md")
LANGUAGES = ("python", "bash", "text", "bibtex")  # and MyST directives, "{name}"
# Top-level modules a core page's snippets must not import (the core install has none of them).
NOT_IN_CORE = ("flax", "tensorflow", "tensorflow_datasets", "sklearn", "orbax", "clu", "ml_collections")

_FENCE = re.compile(
  r"^(?P<indent>[ \t]*)```(?P<info>[^`\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", flags=re.MULTILINE | re.DOTALL
)
_NEEDS = re.compile(r"<!--\s*needs:\s*([\w,\s]+?)\s*-->\s*$")


class Block(NamedTuple):
  page: str  # relative to the repository root
  line: int  # 1-based line of the first line of code
  language: str
  code: str  # dedented
  needs: tuple[str, ...]  # the extras a block on a core page needs (its `<!-- needs: ... -->`)


def pages() -> list[str]:
  return ["README.md"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))


def blocks(page: str) -> list[Block]:
  text = (ROOT / page).read_text()
  found = []
  for match in _FENCE.finditer(text):
    line = text.count("\n", 0, match.start("body")) + 1
    indent = match["indent"]
    code = "".join(row[len(indent) :] if row.startswith(indent) else row for row in match["body"].splitlines(True))
    above = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
    needs = _NEEDS.search(above)
    extras = tuple(e.strip() for e in needs[1].split(",")) if needs else ()
    found.append(Block(page, line, match["info"].strip().split(" ")[0], code, extras))
  return found


def runs_on_core(block: Block) -> bool:
  return block.page in CORE_PAGES and not block.needs


def run(page_blocks: list[Block]) -> dict:
  """Executes the ```python blocks in order in one namespace; tracebacks name the page and line."""
  namespace = {"__name__": "__snippet__"}
  for block in page_blocks:
    if block.language != "python":
      continue
    # Padding keeps the page's line numbers, so a failure points at the Markdown source.
    code = compile("\n" * (block.line - 1) + block.code, str(ROOT / block.page), "exec")
    exec(code, namespace)
  return namespace


def imported_top_level() -> set[str]:
  return {name.split(".")[0] for name in sys.modules}
