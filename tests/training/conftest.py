"""Fixtures of the training tests."""

import pytest


@pytest.fixture(scope="session")
def digits_reference(tmp_path_factory):
  """The workdir of an uninterrupted train.py digits run with `test_processes.RESUME_FLAGS`.

  Shared by the SIGKILL and SIGTERM resume tests (one reference run for both).
  """
  from test_processes import RESUME_FLAGS, _run

  workdir = tmp_path_factory.mktemp("digits_reference") / "run"
  reference = _run(workdir, *RESUME_FLAGS)
  assert reference.returncode == 0, reference.stderr[-3000:]
  return workdir
