"""The documentation cannot drift from the code: README, API reference, config schema, project files.

The site itself is built (warning-free) by .ci/run; these checks are the fast part.
"""

import importlib
import inspect
import json
import pathlib
import re
import sys
import tomllib
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))

import api_reference
import doc_snippets
import evidence

README = (ROOT / "README.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def fenced_blocks(text: str, language: str) -> list[str]:
  return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def section(text: str, heading: str) -> str:
  start = text.index(f"\n## {heading}")
  end = text.find("\n## ", start + 1)
  return text[start : end if end > 0 else len(text)]


# --- The API reference ---


def _is_public_definition(module, name: str, obj) -> bool:
  """A name a user of `module` would reach for: not private, defined by msam_jax in a public module."""
  if name.startswith("_") or isinstance(obj, types.ModuleType):
    return False
  origin = getattr(obj, "__module__", None) or ""
  if any(part.startswith("_") for part in origin.split(".")):
    return False
  if not hasattr(module, "__all__"):  # a plain module: what it defines itself
    return origin == module.__name__
  return origin == module.__name__ or origin.startswith(module.__name__ + ".")  # a package: its own modules


def _own_docstring(obj) -> str:
  doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
  return (doc or "").strip()


@pytest.mark.parametrize("module_name", api_reference.PUBLIC_MODULES)
def test_every_public_symbol_is_exported_documented_and_in_the_reference(module_name):
  module = importlib.import_module(module_name)
  exported = api_reference.public_names(module_name)
  unexported = [n for n, obj in vars(module).items() if _is_public_definition(module, n, obj) and n not in exported]
  assert not unexported, f"{module_name} defines public {unexported} outside __all__: export them or prefix _"
  assert _own_docstring(module), f"{module_name} has no module docstring"
  page = api_reference.page(module_name)
  for name in exported:
    obj = getattr(module, name)
    if inspect.ismodule(obj):
      assert obj.__name__ in api_reference.PUBLIC_MODULES or f".. automodule:: {obj.__name__}" in page
      members = [getattr(obj, n) for n in api_reference.public_names(obj.__name__)]
      undocumented = [m for m in members if (inspect.isclass(m) or callable(m)) and not _own_docstring(m)]
      assert not undocumented, f"{obj.__name__}: no docstring on {undocumented}"
      continue
    if inspect.isclass(obj) or callable(obj):
      assert _own_docstring(obj), f"{module_name}.{name} has no docstring"
    else:
      assert api_reference._constant_comment(module, name), (
        f"{module_name}.{name}: a constant needs a comment on (or just above) its assignment"
      )
    home = api_reference._canonical_module(obj, module_name)
    directive = f"{home}.{name}"
    assert directive in api_reference.page(home), f"{module_name}.{name} is missing from the API reference"


def test_the_reference_pages_are_in_the_site_index():
  index = (ROOT / "docs" / "index.md").read_text()
  for module_name in api_reference.PUBLIC_MODULES:
    assert f"api/{module_name}\n" in index
  assert f"api/{api_reference.CONFIG_PAGE}\n" in index


def _rst_sections(text: str) -> list[tuple[str, list[str]]]:
  """(title, its lines) of each section of a generated page, the part above the first one titled ''."""
  sections, title, body = [], "", []
  lines = text.splitlines()
  for i, line in enumerate(lines):
    if i + 1 < len(lines) and line and re.fullmatch(r"([-=~])\1+", lines[i + 1]) and len(lines[i + 1]) >= len(line):
      sections.append((title, body))
      title, body = line, []
    else:
      body.append(line)
  return sections + [(title, body)]


@pytest.mark.parametrize("module_name", api_reference.PUBLIC_MODULES)
def test_reference_pages_have_a_section_per_module_functions_first(module_name):
  """One section per defining module, each titled for it; functions before classes (an optimizer
  before its state) and constants; exported submodules last, where nothing else follows them."""
  module = importlib.import_module(module_name)
  kind = {"autofunction": 0, "autoclass": 1, "py:data": 2}
  seen_submodules = False
  homes = []
  for title, body in _rst_sections(api_reference.page(module_name)):
    directives = [re.match(r"\.\. ([\w:]+)::\s*(\S*)", line).groups() for line in body if line.startswith(".. ")]
    entries = [(kind[d], target.rpartition(".")[2]) for d, target in directives if d in kind]
    seen_submodules = seen_submodules or title == "Submodules"
    submodule = [target for d, target in directives if d == "automodule" and target != module_name]
    assert not (submodule and entries), f"{module_name}: {entries} would render inside {submodule}'s section"
    if seen_submodules:
      assert not entries, f"{module_name}: {entries} after the submodules"
      continue
    assert [k for k, _ in entries] == sorted(k for k, _ in entries), f"{module_name}, {title!r}: functions first"
    section_homes = {api_reference._home_module(module, name) for _, name in entries}
    assert len(section_homes) <= 1, f"{module_name}, {title!r} mixes {section_homes}"
    if section_homes and title != f"``{module_name}``":
      home = section_homes.pop()
      assert title == api_reference.SECTIONS.get(home), f"{home} needs a title in api_reference.SECTIONS"
      homes.append(home)
  assert len(homes) == len(set(homes)), f"{module_name}: a module's names in two sections"


def test_config_fields_page_has_a_heading_per_section_without_raw_backquotes():
  page = api_reference.config_page()
  titles = [title for title, _ in _rst_sections(page)[1:]]
  assert titles[0] == "Config fields"
  sections = list(dict.fromkeys(section for section, *_ in api_reference.config_schema()))
  assert titles[1:] == [api_reference._rst_cell(api_reference._title_and_lead(s)[0]) for s in sections]
  assert len(titles) >= 6
  for title in titles:
    assert not re.search(r"(?<!`)`(?!`)", title), f"{title!r}: a single backquote would show raw"
  for line in page.splitlines():
    literals = re.findall(r"``(.+?)``", line)
    assert not any("\\" in literal for literal in literals), f"an escape inside a literal shows raw: {line}"


def test_config_schema_gives_every_field_a_default_and_a_meaning():
  from msam_jax.training import config

  rows = api_reference.config_schema()
  assert sorted(field for _, field, *_ in rows) == sorted(config.base_config())
  assert not [field for _, field, _, meaning, _ in rows if not meaning], "add a comment to these fields in base_config"
  by_field = {field: (default, resumable) for _, field, default, _, resumable in rows}
  assert by_field["rho"][0] == repr(config.base_config().rho)
  assert by_field["num_train_steps"][1] and not by_field["num_epochs"][1]


# --- README.md ---


def test_readme_fits_on_a_few_screens_and_starts_with_the_two_commands():
  assert len(README.splitlines()) <= 250
  first = fenced_blocks(README, "bash")[0].splitlines()
  assert first[0].startswith('python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[train,test]"')
  assert first[1] == "python -m pytest -q -n 2 tests"
  assert first[1] in (ROOT / ".ci" / "run").read_text().splitlines()  # the command CI runs


def test_readme_optimizer_table_is_the_registry():
  from msam_jax.optim import registry

  rows = [
    [cell.strip().strip("`") for cell in line.strip("|").split("|")]
    for line in section(README, "Optimizers").splitlines()
    if line.startswith("| `")
  ]
  assert [row[0] for row in rows] == list(registry.names()), "one row per registry entry, in registry order"
  for name, family, base, cost, reference in rows:
    entry = registry.get(name)
    assert (family, base) == (entry.family, entry.base), name
    if entry.family in ("base", "msam"):
      assert cost == "1 gradient", name
    else:
      assert "2 gradients" in cost, name  # the SAM family's second gradient (on some steps, or a sub-batch)
    assert reference, name


def test_readme_library_code_runs_and_does_what_its_comments_say():
  import jax
  import jax.numpy as jnp

  namespace = {}
  exec(fenced_blocks(README, "python")[0], namespace)
  params, clean, loss_fn = namespace["params"], namespace["clean"], namespace["loss_fn"]
  assert not jnp.allclose(params["w"], clean["w"])  # MSAM's params are perturbed, eval_params undoes it
  # The SAM half keeps sam's contract: `grads` is the first gradient at the params it updates, so its
  # update is the first SGD step (-lr g2) on the gradient at clean + rho g1/||g1||.
  mean_grad = jax.grad(lambda p: loss_fn(p).mean())
  g1 = mean_grad(clean)["w"]
  g2 = mean_grad({"w": clean["w"] + 0.05 * g1 / jnp.linalg.norm(g1)})["w"]
  assert jnp.allclose(namespace["grads"]["w"], g1)
  assert jnp.allclose(namespace["updates"]["w"], -0.1 * g2, rtol=1e-5)


def test_readme_names_exist():
  import msam_jax

  for dotted in set(re.findall(r"\bmsam_jax((?:\.\w+)+)", README)):
    obj = msam_jax
    for part in dotted.strip(".").split("."):
      assert hasattr(obj, part), f"README names msam_jax{dotted}, which does not exist"
      obj = getattr(obj, part)


def test_readme_train_commands_use_real_configs_and_fields():
  from msam_jax.training import config

  fields = set(config.base_config())
  for flag in re.findall(r"--config\.(\w+)", README):
    assert flag in fields | {"<field>"}, flag
  for path in re.findall(r"(?:configs/)?(\w+\.py)", section(README, "train.py in 10 lines")):
    assert (ROOT / "configs" / path).exists() or path == "train.py", path


def test_readme_links_point_at_files_that_exist():
  index = (ROOT / "docs" / "index.md").read_text()
  for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README):
    assert (ROOT / target).exists(), target
    if target.startswith("docs/"):
      assert pathlib.Path(target).stem in index, f"{target} is not in the site's table of contents"


def test_readme_headline_numbers_are_the_committed_comparisons():
  """Every 'x ± y' and '+a [+b, +c]' of README's evidence is in a committed results table, and the
  evidence table is the one tests/evidence.py makes from the tuned comparison's results.json."""
  results = ROOT / "benchmarks" / "results"
  clean = (results / "compare_digits" / "table.md").read_text()  # clean labels, 30 epochs (historical)
  tuned = evidence.table()
  headline = section(README, "What it is, and what it buys")
  assert tuned in headline
  text = " ".join(headline.split())
  for number in re.findall(r"[+-]?\d+\.\d+ ± \d+\.\d+|[+-]\d+\.\d+ \[[^]]+\]", text):
    assert number in tuned or number in clean, f"README's {number} is in no committed table"


# --- Every code block of README.md and docs/*.md (tests/doc_snippets.py has the rules) ---


def test_every_fence_says_what_it_holds():
  assert set(doc_snippets.CORE_PAGES) <= set(doc_snippets.pages())
  for page in doc_snippets.pages():
    for block in doc_snippets.blocks(page):
      known = block.language in doc_snippets.LANGUAGES or re.fullmatch(r"\{[\w-]+\}", block.language)
      assert known, (
        f"{page}:{block.line}: a ```{block.language} fence: use python (it runs), bash (checked), text "
        "(not code: a tree, a diagram, output) or bibtex"
      )
      assert block.page in doc_snippets.CORE_PAGES or not block.needs, f"{page}:{block.line}: needs= is for core pages"


@pytest.mark.parametrize(
  "page",
  [
    page
    for page in doc_snippets.pages()
    if any(b.language == "python" and not doc_snippets.runs_on_core(b) for b in doc_snippets.blocks(page))
  ],
)
def test_snippets_under_the_full_install_run(page):
  """Every ```python block the core stage does not run (tests/optim/test_doc_snippets.py runs the rest)."""
  doc_snippets.run(doc_snippets.blocks(page))


def test_shell_blocks_name_real_scripts_configs_fields_and_extras():
  from msam_jax.training import config

  fields = set(config.base_config())
  extras = set(PYPROJECT["project"]["optional-dependencies"])
  checked = 0
  for page in doc_snippets.pages():
    for block in doc_snippets.blocks(page):
      if block.language != "bash":
        continue
      where = f"{page}:{block.line}"
      for script in re.findall(r"\bpython3? (?:-\S+ )*((?:\w+/)*\w+\.py)\b", block.code):
        assert (ROOT / script).exists(), f"{where}: {script} does not exist"
      for module in re.findall(r"\bpython3? -m (benchmarks(?:\.\w+)*)", block.code):
        path = ROOT / module.replace(".", "/")
        assert path.with_suffix(".py").exists() or (path / "__main__.py").exists(), f"{where}: no module {module}"
      for path in re.findall(r"--config (\S+\.py)\b", block.code):
        assert (ROOT / path).exists(), f"{where}: {path} does not exist"
      for field in re.findall(r"--config\.([\w.]+)=", block.code):
        assert field.split(".")[0] in fields, f"{where}: --config.{field} is not a field of base_config"
      for group in re.findall(r"pip install -e \"?\.\[([\w,]+)\]", block.code):
        assert set(group.split(",")) <= extras, f"{where}: pip install -e .[{group}] names an extra pyproject lacks"
      checked += 1
  assert checked >= 10


# --- Project files ---


def test_licence_citation_and_changelog_agree_with_pyproject():
  import yaml

  version = PYPROJECT["project"]["version"]
  assert PYPROJECT["project"]["license"] == "MIT"
  assert (ROOT / "LICENSE").read_text().startswith("MIT License")
  citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
  assert (citation["version"], citation["license"]) == (version, "MIT")
  assert any("2401.12033" in str(ref) for ref in citation["references"])  # the MSAM paper
  assert f"\n## {version}\n" in (ROOT / "CHANGELOG.md").read_text()


def test_the_docs_extra_installs_no_tensorflow_and_conf_mocks_what_the_reference_imports():
  import ast

  from msam_jax import _extras

  docs = PYPROJECT["project"]["optional-dependencies"]["docs"]
  assert not [d for d in docs if re.match(r"msam-jax\[.*\b(train|data)\b|tensorflow", d)], docs
  conf = ast.parse((ROOT / "docs" / "conf.py").read_text())
  mocked = next(
    ast.literal_eval(node.value)
    for node in conf.body
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "autodoc_mock_imports"
  )
  assert {"msam-jax[models]", "orbax-checkpoint", "clu", "ml-collections"} <= set(docs)
  installed = {"flax", "orbax.checkpoint", "clu", "ml_collections"}  # what those install, by module name
  needed = {m for _, modules in _extras.EXTRAS.values() for m in modules}
  assert needed <= installed | set(mocked), f"the API pages import {needed - installed - set(mocked)}: mock or install"
  assert {"tensorflow", "tensorflow_datasets"} <= set(mocked)


def test_the_docs_build_fetches_nothing_by_default():
  """intersphinx reads only the inventories saved in docs/_intersphinx/ unless told to fetch."""
  pytest.importorskip("sphinx")
  import importlib.util

  spec = importlib.util.spec_from_file_location("docs_conf", ROOT / "docs" / "conf.py")
  conf = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(conf)
  saved = {p.stem for p in (ROOT / "docs" / "_intersphinx").glob("*.inv")}
  if "MSAM_DOCS_INTERSPHINX" not in __import__("os").environ:
    assert set(conf.intersphinx_mapping) == saved & set(conf.INTERSPHINX)
    assert all(location.endswith(".inv") for _, location in conf.intersphinx_mapping.values())


def test_ci_builds_the_docs_warning_free_with_the_docs_extra():
  ci = (ROOT / ".ci" / "run").read_text()
  assert re.search(r"^sphinx-build .*-n -W .*docs docs/_build/html$", ci, flags=re.M) and "docs]" in ci  # nitpicky
  command = 'pip install -e ".[docs]" && sphinx-build -n -W docs docs/_build/html'  # the one local command
  for page in ("README.md", "docs/getting_started.md", "docs/contributing.md"):
    assert command in (ROOT / page).read_text(), page
  assert "docs" in PYPROJECT["project"]["optional-dependencies"]
  assert "docs/_build/" in (ROOT / ".gitignore").read_text().splitlines()


# --- docs/choosing.md ---

CHOOSING = (ROOT / "docs" / "choosing.md").read_text()


def test_choosing_defaults_table_is_the_registry():
  from msam_jax.optim import registry

  rows = [
    [cell.strip().strip("`") for cell in line.strip("|").split("|")]
    for line in section(CHOOSING, "rho: one number, two scales").splitlines()
    if line.startswith("| `")
  ]
  assert [row[0] for row in rows] == list(registry.names()), "one row per registry entry, in registry order"
  for name, family, rho in rows:
    entry = registry.get(name)
    assert (family, rho) == (entry.family, "–" if entry.default_rho is None else f"{entry.default_rho:g}"), name
  msam, sam = registry.get("msam").default_rho, registry.get("sam").default_rho
  assert f"its default\nis {msam / sam:.0f} times SAM's ({msam:g} against {sam:g})" in CHOOSING


def test_choosing_evidence_is_the_committed_comparison():
  """The choosing page's evidence: the same table as README's, and the rho it says was chosen."""
  assert evidence.table() in CHOOSING
  results = json.loads((evidence.TUNED / "results.json").read_text())
  block = " ".join(re.search(r"<!-- evidence: rho -->(.*?)<!-- /evidence -->", CHOOSING, flags=re.S).group(1).split())
  claims = re.findall(r"(\w+) rho (\d+(?:\.\d+)?) at noise (\d(?:\.\d+)?) \((final|early-stopped)\)", block)
  assert claims
  for name, rho, level, column in claims:
    chosen = results["sweep"]["chosen"][level][name]["final" if column == "final" else "early_stopped"]
    assert chosen["rho"] == float(rho), (name, level, column)


def test_choosing_commands_use_real_configs_and_fields():
  from msam_jax.training import config

  fields = set(config.base_config())
  for flag in re.findall(r"--config\.(\w+)", CHOOSING):
    assert flag in fields, flag
  for path in re.findall(r"configs/(\w+\.py)", CHOOSING):
    assert (ROOT / "configs" / path).exists(), path
  for name in re.findall(r"--config\.optimizer=(\w+)", CHOOSING):
    assert name in config.OPTIMIZERS, name


def test_cheap_step_costs_are_the_committed_measurement():
  """README's ranges and docs/benchmarks.md's table against benchmarks/results/cheap_steps/output.txt."""
  output = (ROOT / "benchmarks/results/cheap_steps/output.txt").read_text()
  setups = re.findall(r"^(\w+): batch .*?\n\n(.*?)(?=\n## done)", output, flags=re.M | re.S)
  assert [name for name, _ in setups] == ["digits_cnn", "cifar100_wrn16_4"]
  ratios = {}  # row -> ratio per setup
  for _, table in setups:
    for row, ratio in re.findall(r"^\| ([^|]+?) \| float32 \| [^|]+ \| [^|]+ \| ([\d.]+) \(sgd\)", table, flags=re.M):
      ratios.setdefault(row, []).append(ratio)
  columns = ["looksam", "rst", "sam (late 0.2)", "sam", "sgd, again"]
  cost_table = section((ROOT / "docs" / "benchmarks.md").read_text(), "Cost")
  for i, label in enumerate(("digits CNN", "WRN-16-4")):
    row = next(line for line in cost_table.splitlines() if line.startswith(f"| {label}"))
    assert [c.strip() for c in row.strip("|").split("|")[1:]] == [ratios[c][i] for c in columns], label
  readme = " ".join(section(README, "What it is, and what it buys").split())
  for row, words in (("looksam", "costs"), ("rst", "step"), ("sam (late 0.2)", "`--config.rho_schedule=start_jump`)")):
    low, high = min(map(float, ratios[row])), max(map(float, ratios[row]))
    assert f"{words} {low:.2f}-{high:.2f}x" in readme, row
  low, high = min(map(float, ratios["sgd, again"])), max(map(float, ratios["sgd, again"]))
  assert f"SGD against itself: {low:.2f}-{high:.2f}x" in readme
