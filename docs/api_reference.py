"""Generates the API reference pages from the public modules' `__all__`, and the config schema.

Sphinx runs `write_pages` at the start of every build (`conf.py`); `tests/test_docs.py`
uses the same functions to check that every public symbol has a docstring and a place
in the reference. Nothing here is written by hand per symbol: a name added to a
module's `__all__` appears in the reference on the next build.
"""

import functools
import importlib
import inspect
import io
import pathlib
import re
import sys
import textwrap
import tokenize
import types

# The modules whose `__all__` is the public API, in the order of the reference.
# `msam_jax.schedules` is `msam_jax.optim.schedules` (re-exported at the top level).
PUBLIC_MODULES = (
  "msam_jax",
  "msam_jax.optim",
  "msam_jax.optim.schedules",
  "msam_jax.optim.registry",
  "msam_jax.analysis",
  "msam_jax.models",
  "msam_jax.training",
  "msam_jax.data",
)


@functools.cache
def public_names(module_name: str) -> tuple[str, ...]:
  """`__all__` of the module, or its own public top-level definitions when it has none."""
  module = importlib.import_module(module_name)
  if hasattr(module, "__all__"):
    return tuple(module.__all__)
  names = []
  for name, obj in vars(module).items():
    if name.startswith("_") or isinstance(obj, types.ModuleType):
      continue
    if getattr(obj, "__module__", module_name) == module_name or _defined_by_assignment(module, name):
      names.append(name)
  return tuple(names)


def _defined_by_assignment(module, name: str) -> bool:
  """A module-level constant (`FAMILIES = ...`) assigned in the module's own source."""
  try:
    source = inspect.getsource(module)
  except (OSError, TypeError):
    return False
  return any(line.startswith((f"{name} =", f"{name}:")) for line in source.splitlines())


def _canonical_module(obj, owner: str) -> str:
  """Where `obj` is documented: the most specific public module that exports it."""
  holders = [m for m in PUBLIC_MODULES if any(_get(m, n) is obj for n in public_names(m))]
  return max(holders, key=len) if holders else owner


def _get(module_name: str, name: str):
  return getattr(importlib.import_module(module_name), name, None)


def docstring(obj) -> str | None:
  """The object's own docstring (not its type's, for constants)."""
  if inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj):
    return inspect.getdoc(obj)
  return None


# Where a page documents names from several modules, one section per module, in this order and
# under this title (a module missing here gets a section titled with its name, after these).
SECTIONS = {
  "msam_jax.optim.baselines": "Baselines: SGD and AdamW",
  "msam_jax.optim.msam": "Momentum-SAM",
  "msam_jax.optim.sam": "SAM",
  "msam_jax.optim.asam": "ASAM",
  "msam_jax.optim.gsam": "GSAM",
  "msam_jax.optim.esam": "ESAM",
  "msam_jax.optim.looksam": "LookSAM",
  "msam_jax.optim.rst": "RST",
  "msam_jax.optim.state_utils": "What a training loop asks of any optimizer",
  "msam_jax.training.config": "Configs",
  "msam_jax.training.loop": "The training loop",
  "msam_jax.training.evaluated_model": "The evaluated model",
  "msam_jax.training.run_record": "Workdirs",
  "msam_jax.training.checkpoint": "Checkpoints",
  "msam_jax.training.preemption": "Preemption",
  "msam_jax.data.datasets": "Datasets",
  "msam_jax.data.pipeline": "Iterators",
}
CONFIG_PAGE = "config_fields"  # api/config_fields.rst: every field of base_config


def page(module_name: str) -> str:
  """The reStructuredText of one module's reference page.

  Functions come before classes (an optimizer before its state NamedTuple) and constants, each in
  source order; names defined in different modules get a section per module (`SECTIONS`), and
  exported submodules without a page of their own a section each, last.
  """
  module = importlib.import_module(module_name)
  title = f"``{module_name}``"
  lines = [title, "=" * len(title), "", f".. automodule:: {module_name}", "   :no-members:", ""]
  if module_name == "msam_jax.training":
    lines += [f"Every field of `base_config`, its default and meaning: :doc:`{CONFIG_PAGE}`.", ""]
  names = public_names(module_name)
  submodules = [n for n in names if inspect.ismodule(getattr(module, n))]
  members = [n for n in names if n not in submodules]
  here = [n for n in members if _canonical_module(getattr(module, n), module_name) == module_name]
  by_section = lambda n: (_section_rank(_home_module(module, n)), _order(module, n))
  elsewhere = sorted((n for n in members if n not in here), key=by_section)  # on another page: the table links there
  groups = {}
  for name in sorted(here, key=by_section):
    groups.setdefault(_home_module(module, name), []).append(name)
  ordered = list(groups)
  if elsewhere or len(groups) <= 1:  # one table for the page
    lines += _summary(module_name, [n for m in ordered for n in groups[m]] + elsewhere)
  for home in ordered:
    if len(groups) > 1:
      lines += _section(SECTIONS.get(home, f"``{home}``"))
      lead = (inspect.getdoc(sys.modules[home]) or "").split("\n\n")[0]
      lines += [" ".join(lead.split()), "", *_summary(module_name, groups[home])]
    for name in groups[home]:
      lines += _directives(module, module_name, name)
  if submodules:
    lines += _section("Submodules") + _summary(module_name, submodules)
  for name in submodules:
    obj = getattr(module, name)
    if obj.__name__ not in PUBLIC_MODULES:  # a public module has its own page
      lines += _section(f"``{obj.__name__}``", "~") + [f".. automodule:: {obj.__name__}", "   :members:", ""]
  return "\n".join(lines) + "\n"


def _section_rank(home: str) -> tuple:
  return (list(SECTIONS).index(home) if home in SECTIONS else len(SECTIONS), home)


def _order(module, name: str) -> tuple:
  """Functions, then classes, then constants; each in the order of its module's source, except
  that a module's namesake comes first (`sam` before the `ascent_perturbation` it uses)."""
  obj = getattr(module, name)
  kind = 1 if inspect.isclass(obj) else 0 if callable(obj) else 2
  namesake = _home_module(module, name).rpartition(".")[2] == name
  try:
    line = inspect.getsourcelines(obj)[1] if kind < 2 else _assignment(module, name)[1]
  except (OSError, TypeError):
    line = 0
  return kind, not namesake, line, name


def _home_module(module, name: str) -> str:
  """The module that defines `name`: a function's or class's own, a constant's assigning module."""
  obj = getattr(module, name)
  if inspect.isclass(obj) or callable(obj):
    return obj.__module__
  return _assignment(module, name)[0]


def _summary(module_name: str, names: list[str]) -> list[str]:
  if not names:
    return []
  return [".. autosummary::", "   :nosignatures:", "", *[f"   {_target(module_name, n)}" for n in names], ""]


def _directives(module, module_name: str, name: str) -> list[str]:
  obj = getattr(module, name)
  full = f"{module_name}.{name}"
  if inspect.isclass(obj):
    named_tuple = issubclass(obj, tuple) and hasattr(obj, "_fields")  # a state: its docstring names the fields
    return [f".. autoclass:: {full}", "   :no-members:" if named_tuple else "   :members:", ""]
  if callable(obj):
    return [f".. autofunction:: {full}", ""]
  lines = [f".. py:data:: {full}", f"   :value: {_short_repr(obj)}", ""]
  comment = _constant_comment(module, name)
  return lines + ([textwrap.indent(comment, "   "), ""] if comment else [])


def _target(module_name: str, name: str) -> str:
  """The documented name of `module_name.name`, relative to the page as autosummary wants it.

  The `~` shows only its last part (`msam_jax`'s table says `msam`, not `optim.msam`).
  """
  obj = _get(module_name, name)
  where = obj.__name__ if inspect.ismodule(obj) else f"{_canonical_module(obj, module_name)}.{name}"
  prefix = module_name + "."
  return "~" + (where[len(prefix) :] if where.startswith(prefix) else where)


def _section(title: str, underline: str = "-") -> list[str]:
  return [title, underline * len(title), ""]


def _short_repr(obj) -> str:
  text = repr(obj)
  if isinstance(obj, types.MappingProxyType):
    text = "{" + ", ".join(repr(k) for k in obj) + ": ...}"
  return text if len(text) < 200 else text[:197] + "..."


def _assignment(module, name: str) -> tuple[str, int]:
  """(module name, line) of the assignment of the constant `name`, or ("", 0).

  Looked up in `module` and then in every loaded msam_jax module (a constant re-exported by a
  package, like `msam_jax.data.DATASETS`, is assigned in one of its modules).
  """
  for candidate in _candidates(module):
    try:
      source = inspect.getsource(candidate).splitlines()
    except (OSError, TypeError):
      continue
    for i, line in enumerate(source):
      if line.startswith((f"{name} =", f"{name}:")):
        return candidate.__name__, i + 1
  return "", 0


def _candidates(module) -> list:
  return [module] + [m for n, m in sorted(sys.modules.items()) if n.startswith("msam_jax") and m is not module]


def _constant_comment(module, name: str) -> str:
  """The comment on the line that assigns a constant, or the comment lines just above it."""
  home, number = _assignment(module, name)
  if not home:
    return ""
  source = inspect.getsource(sys.modules[home]).splitlines()
  line = source[number - 1]
  if "#" in line:
    return line.split("#", 1)[1].strip()
  above = []
  j = number - 2
  while j >= 0 and source[j].startswith("#"):
    above.insert(0, source[j].lstrip("# "))
    j -= 1
  return " ".join(above)


def write_pages(outdir: pathlib.Path) -> list[pathlib.Path]:
  """Writes one page per public module into `outdir`; returns the paths."""
  outdir.mkdir(parents=True, exist_ok=True)
  paths = []
  pages = {f"{module_name}.rst": page(module_name) for module_name in PUBLIC_MODULES}
  pages[f"{CONFIG_PAGE}.rst"] = config_page()
  for name, text in pages.items():
    path = outdir / name
    if not path.exists() or path.read_text() != text:  # unchanged files keep Sphinx's cache valid
      path.write_text(text)
    paths.append(path)
  return paths


# --- The config schema: every field of msam_jax.training.base_config() ---


def _config_comments() -> tuple[dict[str, str], dict[str, str]]:
  """Field -> its comment, field -> its section, read from `base_config`'s source.

  A field's comment is the comment on its line plus the comment block directly above
  it; a comment block that follows a blank line is the heading of the fields below it.
  """
  from msam_jax.training import config

  source = textwrap.dedent(inspect.getsource(config.base_config))
  own = {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      own.setdefault(tok.start[0], []).append(tok.string.lstrip("#").strip())
  comments, sections = {}, {}
  block, block_is_heading, after_blank, section = [], False, True, ""
  for number, line in enumerate(source.splitlines(), start=1):
    stripped = line.strip()
    if not stripped:
      block, after_blank = [], True
      continue
    if stripped.startswith("#"):
      if not block:
        block_is_heading = after_blank
      block.append(stripped.lstrip("#").strip())
      if block_is_heading:
        section = " ".join(block)
      after_blank = False
      continue
    if stripped.startswith("c.") and "=" in stripped.split("(")[0]:
      field = stripped[2:].split("=", 1)[0].strip()
      if field.isidentifier():
        above = [] if block_is_heading else block
        comments[field] = " ".join(above + own.get(number, []))
        sections[field] = section
    block, after_blank = [], False
  return comments, sections


def _generated_meaning(field: str) -> str:
  """What the registry and the config's constants say about a field without a comment."""
  from msam_jax.optim import registry
  from msam_jax.training import config

  choices = {
    "optimizer": config.OPTIMIZERS,
    "lr_schedule": config.LR_SCHEDULES,
    "rho_schedule": config.RHO_SCHEDULES,
    "dtype": config.DTYPES,
  }
  parts = []
  if field in choices:
    parts.append("one of " + ", ".join(f"``{c}``" for c in choices[field]))
  users = {}
  for name in registry.names():
    entry = registry.get(name)
    readers = [entry] if entry.family != "sam" else [entry, registry.get(entry.base)]  # a sam entry builds its base
    for reader in readers:
      keywords = [k for k, f in reader.config_fields.items() if f == field] + [k for k in reader.injected if k == field]
      for keyword in keywords:
        if name not in users.setdefault(keyword, []):
          users[keyword].append(name)
  for keyword, names in users.items():
    parts.append(f"``{keyword}`` of " + ", ".join(f"``{n}``" for n in names))
  return "; ".join(parts)


def config_schema() -> list[tuple[str, str, str, str, bool]]:
  """(section, field, default, meaning, may change on resume) for every field of `base_config()`."""
  from msam_jax.training import config

  defaults = config.base_config()
  comments, sections = _config_comments()
  rows = []
  in_source_order = [f for f in comments if f in defaults] + [f for f in defaults if f not in comments]
  for field in in_source_order:
    value = defaults[field]
    if hasattr(value, "to_dict"):
      value = value.to_dict()
    meaning = "; ".join(part for part in (comments.get(field, ""), _generated_meaning(field)) if part)
    rows.append((sections.get(field, ""), field, repr(value), meaning, field in config.RESUMABLE_FIELDS))
  return rows


def _rst_cell(text: str) -> str:
  """A comment as reStructuredText: backquoted names literal (as they are), stars and bars plain."""
  parts = re.split(r"(``.+?``|`[^`]+`)", text)
  for i, part in enumerate(parts):
    if i % 2:  # a `name` or ``name``
      parts[i] = "``" + part.strip("`") + "``"
    else:
      parts[i] = part.replace("*", r"\*").replace("|", r"\|").replace("_ ", r"\_ ")
  return "".join(parts)


def _title_and_lead(section: str) -> tuple[str, str]:
  """A config section's comment as a heading and the sentence below it ("Model: `build(...)`.")."""
  if not section:
    return "Run", ""
  head, colon, rest = section.partition(": ")
  if colon and "`" not in head:
    return head, rest
  return section.rstrip("."), ""


def config_page() -> str:
  """The reStructuredText of the config fields' page: a section and a table per config section."""
  lines = [
    ".. _config-fields:",
    "",
    *_section("Config fields", "="),
    "Every field of :func:`msam_jax.training.base_config`, generated from its source: the",
    "default, and the comment that defines it (for an optimizer's hyper-parameter also which",
    "optimizers read it, from :mod:`msam_jax.optim.registry`). Override any with",
    "``--config.<field>=value``; *resume: yes* marks the fields a resumed run may change",
    "(``RESUMABLE_FIELDS``).",
    "",
  ]
  current = None
  for section, field, default, meaning, resumable in config_schema():
    if section != current:
      current = section
      title, lead = _title_and_lead(section)
      lines += ["", *_section(_rst_cell(title))]
      lines += [_rst_cell(lead), ""] if lead else []
      lines += [".. list-table::", "   :header-rows: 1", "   :widths: 20 25 45 10", ""]
      lines += ["   * - field", "     - default", "     - meaning", "     - resume"]
    lines += [
      f"   * - ``{field}``",
      f"     - ``{default}``",
      f"     - {_rst_cell(meaning)}",
      f"     - {'yes' if resumable else ''}",
    ]
  return "\n".join(lines) + "\n"
