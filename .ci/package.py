"""Packaging checks for .ci/run: the wheel's contents, the core floors, the installed package.

python .ci/package.py check-wheel WHEEL     the wheel holds msam_jax, every module of it, nothing else
python .ci/package.py floors                pyproject's core dependencies at their floors: jax==0.8.2 ...
python -P .ci/package.py check-installed REPO
                                            msam_jax comes from site-packages (not REPO), without Flax
                                            or TensorFlow, and one msam step runs
"""

import pathlib
import re
import sys
import tomllib
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def check_wheel(wheel: str) -> None:
  names = set(zipfile.ZipFile(wheel).namelist())
  stray = sorted(n for n in names if n.split("/")[0] != "msam_jax" and ".dist-info/" not in n)
  modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "msam_jax").rglob("*.py")}
  missing = sorted(modules - names)
  if stray or missing:
    sys.exit(f"{wheel}: files outside msam_jax {stray}, modules missing {missing}")
  print(f"{pathlib.Path(wheel).name}: {len(modules)} modules of msam_jax, nothing else")


def floors() -> None:
  dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
  pins = []
  for dependency in dependencies:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", dependency.replace(" ", ""))
    if not match:
      sys.exit(f"pyproject.toml: core dependency {dependency!r} needs a plain floor (name>=version) to be tested")
    pins.append(f"{match[1]}=={match[2]}")
  print(" ".join(pins))


def check_installed(repo: str) -> None:
  import importlib.metadata
  import importlib.util

  import msam_jax

  where = pathlib.Path(msam_jax.__file__).resolve()
  print(f"msam_jax from {where}")
  if pathlib.Path(repo).resolve() in where.parents or "site-packages" not in where.parts:
    sys.exit("msam_jax is imported from the source tree, not from the installed wheel")
  extras = [m for m in ("flax", "tensorflow") if importlib.util.find_spec(m)]
  if extras:
    sys.exit(f"the core install has {extras}: the core stage must run without them")
  print(", ".join(f"{m} {importlib.metadata.version(m)}" for m in ("jax", "jaxlib", "optax", "numpy")))

  import jax.numpy as jnp

  params = {"w": jnp.array([1.0, -2.0])}
  optimizer = msam_jax.msam(learning_rate=0.1, rho=0.3)
  state = optimizer.init(params)
  updates, state = optimizer.update({"w": 2 * params["w"]}, state, params)
  if not bool(jnp.all(jnp.isfinite(updates["w"]))) or not bool(jnp.any(updates["w"] != 0)):
    sys.exit(f"one msam step from the installed wheel gave {updates}")


if __name__ == "__main__":
  command, *args = sys.argv[1:]
  {"check-wheel": check_wheel, "floors": floors, "check-installed": check_installed}[command](*args)
