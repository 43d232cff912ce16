"""The library pages' code blocks (README.md, getting started, optimizers, sharpness) run as written.

Here, in tests/optim, so that CI's core-install stage (jax, optax and numpy only: no Flax, no
TensorFlow) runs them too: a snippet on these pages that needed an extra would fail there. Blocks
that do need one say so (`<!-- needs: models -->`) and run in tests/test_docs.py instead
(tests/doc_snippets.py has the rules).
"""

import pytest

import doc_snippets


def _core_blocks(page):
  return [b for b in doc_snippets.blocks(page) if b.language == "python" and doc_snippets.runs_on_core(b)]


@pytest.mark.parametrize("page", [page for page in doc_snippets.CORE_PAGES if _core_blocks(page)])
def test_core_page_snippets_run_without_the_extras(page):
  page_blocks = _core_blocks(page)
  before = doc_snippets.imported_top_level()
  doc_snippets.run(page_blocks)
  new = doc_snippets.imported_top_level() - before
  assert not new & set(doc_snippets.NOT_IN_CORE), f"{page}'s snippets imported {new & set(doc_snippets.NOT_IN_CORE)}"
