"""Runs survive upgrading the package: a workdir written by msam-jax 0.1.0 resumes.

`data/workdir_0.1.0` was written by `train.py --config configs/digits.py
--config.num_train_steps=3 --config.checkpoint_every_steps=3` at the code of 0.1.0
(commit ebc71ab): its config.json has the flat optimizer fields of then (momentum,
esam_beta, ...) and lacks every field added since (label noise, the validation split,
MESA, ...); its checkpoint holds step 3.
"""

import json
import logging
import os
import shutil

import pytest

from msam_jax import training
from msam_jax.training import run_record

from helpers import REPO, load_config

OLD_WORKDIR = os.path.join(REPO, "tests", "training", "data", "workdir_0.1.0")
# What configs/digits.py said then and says differently now (it holds out a validation split since).
AS_THEN = {"validation_fraction": 0.0, "eval_every_epochs": 5}


def _recorded():
  with open(os.path.join(OLD_WORKDIR, "config.json")) as f:
    return json.load(f)


def test_an_old_record_reads_as_todays_config_of_the_same_run():
  recorded = _recorded()
  assert "esam_beta" in recorded and "label_noise" not in recorded  # the 0.1.0 layout
  current = run_record.config_record(training.resolve(load_config("digits", **AS_THEN)))
  assert run_record.differing_fields(recorded, current)  # read as it is, it differs in many fields
  assert run_record.differing_fields(run_record.upgraded_record(recorded), current) == []


def test_an_old_record_still_differs_where_the_run_differs():
  upgraded = run_record.upgraded_record(_recorded())
  for change, field in (({"rho": 0.5}, "rho"), ({"optimizer_kwargs": {"momentum": 0.8}}, "optimizer_kwargs.momentum")):
    current = run_record.config_record(training.resolve(load_config("digits", **AS_THEN, **change)))
    assert run_record.differing_fields(upgraded, current) == [field]
  # Today's digits config (a validation split) is another run than the recorded one.
  current = run_record.config_record(training.resolve(load_config("digits", eval_every_epochs=5)))
  assert run_record.differing_fields(upgraded, current) == ["validation_fraction"]


def test_an_old_record_drops_other_optimizers_flat_options():
  upgraded = run_record.upgraded_record({**_recorded(), "optimizer": "adamw"})
  assert upgraded["optimizer_kwargs.b2"] == 0.999 and upgraded["optimizer_kwargs.weight_decay"] == 5e-4
  assert not any(k.startswith(("esam_", "looksam_", "optimizer_kwargs.k")) for k in upgraded)


@pytest.mark.slow
def test_a_workdir_of_version_0_1_0_resumes_from_its_checkpoint(tmp_path, one_device_mesh, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(OLD_WORKDIR, workdir)
  config = load_config("digits", **AS_THEN, num_train_steps=5, checkpoint_every_steps=5, async_checkpointing=False)
  with caplog.at_level(logging.INFO, logger="msam_jax.training"):
    results = training.train_and_evaluate(config, str(workdir), mesh=one_device_mesh)
  assert "Resuming from the checkpoint of step 3." in caplog.text
  assert results["steps"] == 5
  assert [entry["step"] for entry in results["eval_history"]] == [3, 5]  # step 3's evaluation is 0.1.0's
  assert run_record.differing_fields(_recorded(), json.loads((workdir / "config.json").read_text()))  # rewritten
