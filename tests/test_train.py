"""The trainer end to end on the tiny synthetic config."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from m3oe_jax import checkpoint, evaluate, params_io, train
from m3oe_jax.data import load_dataset
from m3oe_jax.errors import WorkdirError
from m3oe_jax.models import build_model
from tests import event_files
from tests.helpers import REPO, tiny_train_config

tiny_config = tiny_train_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config()
  result = train.train_and_evaluate(config, str(workdir))
  return config, workdir, result


def test_run_writes_metrics_tensorboard_and_checkpoints(finished_run):
  config, workdir, result = finished_run
  saved = json.loads((workdir / "metrics.json").read_text())
  assert saved["test"]["mean_auc"] == result["test"]["mean_auc"]
  assert 0.6 < result["test"]["mean_auc"] <= 1.0
  assert len(saved["test"]["pairs"]) == 3 * 2

  tags = event_files.scalars(workdir / "tensorboard")
  assert "train/loss" in tags and "train/examples_per_second" in tags
  for name in ("bal_d", "bal_t", "exp_d", "exp_t"):
    values = [v for _, v in tags[f"fusion_weights/{name}"]]
    assert len(values) == config.num_epochs and all(0 < v < 1 for v in values)
  pair = "synthetic_domain1/synthetic_task0"
  assert len(tags[f"validation/auc/{pair}"]) == config.num_epochs
  assert f"validation/logloss/{pair}" in tags
  gate_tags = [t for t in tags if t.startswith(f"gates/{pair}/")]
  assert len(gate_tags) == config.model.m3oe.num_shared_experts
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == list(range(config.num_epochs))
  assert abs(records[-1]["validation"]["mean_auc"] - tags["validation/mean_auc"][-1][1]) < 1e-6
  assert set(records[0]["diagnostics"]["fusion_weights"]) == {"bal_d", "bal_t", "exp_d", "exp_t"}
  assert np.asarray(records[0]["diagnostics"]["gates"]).shape == (
      3, 2, config.model.m3oe.num_shared_experts)

  store = checkpoint.CheckpointStore(workdir, read_only=True)
  meta = store.read_meta("latest")
  assert meta["progress"]["epoch"] == config.num_epochs
  assert meta["config"]["model"]["m3oe"]["fcn_dims"] == list(config.model.m3oe.fcn_dims)
  assert meta["schema"]["task_names"] == ["synthetic_task0", "synthetic_task1"]
  best_meta = store.read_meta("best")
  assert best_meta["progress"]["best_epoch"] == result["best_epoch"]


def test_checkpoint_loads_in_a_notebook_without_the_mesh(finished_run):
  config, workdir, result = finished_run
  variables, schema, saved_config = params_io.load_params(workdir, "best")
  model = build_model(saved_config.model, schema)
  test = load_dataset(config.data).splits["test"]
  batch = test.take(np.arange(len(test)))
  logits, _ = jax.jit(model.apply)(variables, batch)
  from m3oe_jax import metrics
  again = metrics.evaluate_predictions(np.asarray(jax.nn.sigmoid(logits)), batch["labels"],
                                       batch["domain"], schema.domain_names,
                                       schema.task_names)
  assert abs(again["mean_auc"] - result["test"]["mean_auc"]) < 1e-6


def test_evaluate_reports_a_checkpoints_metrics_and_names_bad_input(finished_run, tmp_path):
  _, workdir, result = finished_run
  assert evaluate.evaluate_checkpoint(str(workdir), "test")["pairs"] == result["test"]["pairs"]
  with pytest.raises(ValueError, match="--split='dev'"):
    evaluate.evaluate_checkpoint(str(workdir), "dev")
  with pytest.raises(FileNotFoundError, match="no best checkpoint"):
    evaluate.evaluate_checkpoint(str(tmp_path / "empty"))
  assert not (tmp_path / "empty").exists()


def test_rerunning_a_finished_run_reports_the_same_metrics(finished_run):
  config, workdir, result = finished_run
  again = train.train_and_evaluate(config, str(workdir))
  assert again["test"] == result["test"]


def test_incompatible_workdir_is_refused(finished_run, tmp_path):
  _, workdir, _ = finished_run
  with pytest.raises(WorkdirError, match=r"model\.embed_dim"):
    train.train_and_evaluate(tiny_config(**{"model.embed_dim": 4}), str(workdir))


def test_non_finite_loss_stops_without_saving_bad_state(tmp_path):
  config = tiny_config(**{"optimizer.model_lr": 1e36, "checkpoint_every_steps": 2,
                          "log_every_steps": 1})
  with pytest.raises(FloatingPointError, match="step"):
    train.train_and_evaluate(config, str(tmp_path))
  store = checkpoint.CheckpointStore(tmp_path, read_only=True)
  for mngr in (store.latest, store.best):
    for step_number in mngr.all_steps():
      variables, _, _ = params_io.load_params(tmp_path, "latest" if mngr is store.latest
                                               else "best")
      assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(variables))


@pytest.mark.parametrize("schedule", ["paper", "darts"])
def test_other_schedules_take_their_architecture_steps(schedule, tmp_path):
  config = tiny_config(**{"optimizer.schedule": schedule, "num_epochs": 1,
                          "optimizer.arch_every_steps": 5})
  train.train_and_evaluate(config, str(tmp_path))
  meta = checkpoint.CheckpointStore(tmp_path, read_only=True).read_meta("latest")
  steps = 25  # ceil(3200 / 128) training batches in the one epoch
  expected = steps // 5 if schedule == "darts" else 1
  assert meta["progress"]["arch_steps"] == expected


def _train_command(workdir):
  return [sys.executable, "-m", "m3oe_jax.train", "--config=configs/synthetic.py:tiny",
          f"--workdir={workdir}", "--config.num_epochs=4", "--config.checkpoint_every_steps=7"]


ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def uninterrupted_metrics(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  subprocess.run(_train_command(workdir), cwd=REPO, env=ENV, check=True, capture_output=True)
  return json.loads((workdir / "metrics.json").read_text())


def _wait_for_checkpoint(proc, workdir):
  latest = workdir / "checkpoints" / "latest"
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if latest.exists() and any(p.name.isdigit() for p in latest.iterdir()):
      return
    time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_gives_the_same_metrics(tmp_path,
                                                                  uninterrupted_metrics):
  env = ENV
  killed = tmp_path / "killed"
  rng = random.Random(0)
  for attempt in range(3):
    proc = subprocess.Popen(_train_command(killed), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(proc, killed)
    time.sleep(rng.uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  subprocess.run(_train_command(killed), cwd=REPO, env=env, check=True, capture_output=True)
  got = json.loads((killed / "metrics.json").read_text())
  assert got == uninterrupted_metrics


@pytest.mark.slow
def test_sigterm_saves_the_current_step_exits_cleanly_and_resumes_exactly(
    tmp_path, uninterrupted_metrics):
  workdir = tmp_path / "preempted"
  proc = subprocess.Popen(_train_command(workdir), cwd=REPO, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(proc, workdir)
  time.sleep(0.3)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr
  assert "preempted: saved step" in stderr
  saved = int(stderr.split("preempted: saved step ")[1].split()[0])
  latest = checkpoint.CheckpointStore(workdir, read_only=True)
  assert latest.latest_step() == saved
  assert not (workdir / "metrics.json").exists()
  subprocess.run(_train_command(workdir), cwd=REPO, env=ENV, check=True, capture_output=True)
  assert json.loads((workdir / "metrics.json").read_text()) == uninterrupted_metrics


def test_a_variant_run_records_what_the_report_needs_and_reference_test_weights(tmp_path):
  config = tiny_config(**{"variant.domains": (1,), "num_epochs": 2,
                          "test_weights": "reference"})
  result = train.train_and_evaluate(config, str(tmp_path))
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved["domains"] == ["synthetic_domain1"] and saved["model"] == "m3oe"
  assert saved["variant"]["domains"] == ["synthetic_domain1"]
  assert saved["paper_data"] is False  # the report shows no paper numbers beside it
  assert sorted(saved["test"]["pairs"]) == ["synthetic_domain1/synthetic_task0",
                                           "synthetic_domain1/synthetic_task1"]
  # No early stop in 2 epochs: the reference tests the last weights.
  assert saved["tested_weights"] == "last"
  assert saved["tested_step"] == checkpoint.CheckpointStore(tmp_path, read_only=True).latest_step()
  assert result["test"] == saved["test"]
