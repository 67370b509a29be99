"""Hostile drills: relative and `~` paths, a full disk, readers beside a running
trainer, refused runs that leave nothing behind.

Tests marked `slow` start real processes; CI runs them all.
"""

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import uuid

import jax
import numpy as np
import pytest

from configs.sweeps import table2 as configs_table2
from m3oe_jax import checkpoint, evaluate, params_io, paths, run_log, sweep, train
from m3oe_jax.errors import ConfigError, DiskFullError, MissingCheckpointError
from tests.helpers import REPO, tiny_train_config

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
TINY = f"--config={REPO}/configs/synthetic.py:tiny"


def _run(args, cwd, env=ENV, timeout=600):
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _error_lines(stderr: str, command: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith(f"{command}: error: ")]


def _partial_steps(workdir) -> list[str]:
  return [str(p) for p in (workdir / "checkpoints").glob("*/*.orbax-checkpoint-tmp*")]


# 1. Relative paths and `~`.

@pytest.mark.slow
def test_every_command_takes_relative_and_home_paths(tmp_path):
  (tmp_path / "home").mkdir()
  env = {**ENV, "HOME": str(tmp_path / "home")}
  trained = _run(["m3oe_jax.train", TINY, "--workdir=runs/x", "--config.num_epochs=1"],
                 cwd=tmp_path, env=env)
  assert trained.returncode == 0, trained.stderr
  workdir = tmp_path / "runs" / "x"
  assert params_io.saved_steps(workdir, "best") and not _partial_steps(workdir)
  shutil.copytree(workdir, tmp_path / "home" / "x")

  (tmp_path / "sub").mkdir()
  evaluated = _run(["m3oe_jax.evaluate", "--workdir=~/x", "--which=latest",
                    "--output=../eval.json"], cwd=tmp_path / "sub", env=env)
  assert evaluated.returncode == 0, evaluated.stderr
  assert json.loads((tmp_path / "eval.json").read_text())["mean_auc"] > 0.5
  exported = _run(["m3oe_jax.export", "--workdir=../runs/x", "--out=./exported"],
                  cwd=tmp_path / "sub", env=env)
  assert exported.returncode == 0, exported.stderr
  assert (tmp_path / "sub" / "exported" / "predict.jaxexport").exists()


def test_the_library_resolves_relative_and_home_workdirs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  store = checkpoint.CheckpointStore("runs/y")
  assert str(store.root) == str(tmp_path / "runs" / "y" / "checkpoints")
  assert str(checkpoint.CheckpointStore("~/z").root) == str(tmp_path / "home/z/checkpoints")
  assert str(paths.resolve("gs://bucket/run")) == "gs://bucket/run"

  sweep_config = configs_table2.get_config("tiny")
  workdirs = []
  sweep.run_sweep(sweep_config, "sweeps/rel", "tiny", out=io.StringIO(),
                  train_fn=lambda config, workdir: workdirs.append(workdir) or {"test": {}})
  assert workdirs and all(
      pathlib.Path(w).is_absolute() and pathlib.Path(w).is_relative_to(tmp_path / "sweeps/rel")
      for w in workdirs)


# 2. A full disk.

def _mount_tmpfs(folder, size_kib: int) -> bool:
  folder.mkdir(parents=True, exist_ok=True)
  if not shutil.which("mount") or os.geteuid() != 0:
    return False
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs",
                         str(folder)], capture_output=True)
  return done.returncode == 0


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_room(tmp_path):
  disk = tmp_path / "disk"
  if not _mount_tmpfs(disk, 1100):  # room for two tiny checkpoints, not three
    pytest.skip("needs root and tmpfs to make a small file system")
  try:
    args = ["m3oe_jax.train", TINY, f"--workdir={disk}/run",
            "--config.compilation_cache_dir="]
    full = _run(args, cwd=tmp_path)
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stderr
    [line] = _error_lines(full.stderr, "m3oe_jax.train")
    assert "no space left to save step" in line and f"{disk}/run/checkpoints" in line
    assert "MiB free, about" in line and "rerun the same command" in line
    assert not _partial_steps(disk / "run")
    kept = checkpoint.CheckpointStore(disk / "run", read_only=True).checkpoints()
    assert kept, "the checkpoints saved before the disk filled are kept"

    subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
    resumed = _run(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {disk}/run/checkpoints/" in resumed.stderr
    assert (disk / "run" / "metrics.json").exists()
  finally:
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_write_that_fails_for_space_leaves_no_partial_step(tmp_path, monkeypatch):
  config = tiny_train_config(num_epochs=1)
  result = train.train_and_evaluate(config, str(tmp_path))
  del result
  store = checkpoint.CheckpointStore(tmp_path)
  state, progress, _ = store.restore("latest", _abstract_state(config, tmp_path))
  step = int(state.step) + 1

  def failing_save(step_number, args):
    del args
    partial = tmp_path / "checkpoints" / "latest" / f"{step_number}.orbax-checkpoint-tmp-1"
    (partial / "state").mkdir(parents=True)
    raise ValueError('RESOURCE_EXHAUSTED: Error writing local file ".../_sharding": '
                     "No space left on device [os_error_code='28']")

  monkeypatch.setattr(store.latest, "save", failing_save)
  with pytest.raises(DiskFullError, match=rf"no space left to save step {step} .*intact"):
    store.save("latest", state.replace(step=np.asarray(step, np.int32)), progress, config,
               _schema(tmp_path))
  assert not _partial_steps(tmp_path)
  assert params_io.saved_steps(tmp_path, "latest")[-1] == step - 1


def _abstract_state(config, workdir):
  from m3oe_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
  from m3oe_jax.trainer import Trainer  # pylint: disable=g-import-not-at-top
  from m3oe_jax import sharding  # pylint: disable=g-import-not-at-top
  del workdir
  dataset = load_dataset(config.data, config.get("variant"))
  return Trainer(config, dataset, sharding.make_mesh(config.mesh)).abstract_state()


def _schema(workdir):
  meta = checkpoint.CheckpointStore(workdir, read_only=True).read_meta("latest")
  return checkpoint.FeatureSchema.from_dict(meta["schema"])


# 4. Reading a workdir while a trainer writes it.

@pytest.mark.slow
def test_readers_get_whole_checkpoints_while_a_trainer_prunes_them(tmp_path):
  workdir = tmp_path / "run"
  trainer = subprocess.Popen(
      [sys.executable, "-m", "m3oe_jax.train", TINY, f"--workdir={workdir}",
       "--config.checkpoint_every_steps=2", "--config.num_epochs=40", "--config.patience=40"],
      cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while len(params_io.saved_steps(workdir, "latest")) < 2 and time.time() < deadline:
      assert trainer.poll() is None, trainer.stderr.read()
      time.sleep(0.2)
    loads, evaluations, steps = 0, 0, set()
    while trainer.poll() is None and loads < 60:
      variables, _, _ = params_io.load_params(workdir, "latest")
      for table in jax.tree.leaves(variables["params"]["embedding"]):
        assert np.all(np.isfinite(table)) and np.any(table != 0)
      loads += 1
      steps.add(params_io.saved_steps(workdir, "latest")[-1])
      if loads % 20 == 0:
        result = evaluate.evaluate_checkpoint(str(workdir), "validation", "latest")
        assert result["mean_auc"] is not None
        evaluations += 1
    assert loads >= 20 and evaluations >= 1 and len(steps) > 3, (loads, evaluations, steps)
  finally:
    trainer.kill()
    trainer.communicate()


def test_a_reader_moves_on_when_its_step_is_pruned_under_it(tmp_path):
  folder = tmp_path / "checkpoints" / "latest"
  for step in (4, 6):
    (folder / str(step)).mkdir(parents=True)
  reads = []

  def read(step):
    reads.append(step)
    if step == 6:
      os.rename(folder / "6", tmp_path / "pruned")  # the trainer replaces 6 by 8
      (folder / "8").mkdir()
      raise FileNotFoundError("6/state/...: missing chunk")
    return f"read {step}"

  assert params_io.read_newest(tmp_path, "latest", read) == (8, "read 8")
  assert reads == [6, 8]


def test_a_step_that_fails_to_read_while_it_exists_is_damage_not_a_race(tmp_path):
  (tmp_path / "checkpoints" / "latest" / "6").mkdir(parents=True)

  def read(step):
    raise KeyError("meta")

  with pytest.raises(KeyError):
    params_io.read_newest(tmp_path, "latest", read)
  with pytest.raises(MissingCheckpointError):
    params_io.read_newest(tmp_path / "none", "latest", read)


def test_a_readers_own_mistake_is_not_retried_while_the_trainer_saves(tmp_path):
  folder = tmp_path / "checkpoints" / "latest"
  (folder / "6").mkdir(parents=True)
  reads = []

  def read(step):
    reads.append(step)
    (folder / str(step + 2)).mkdir()  # the trainer saves meanwhile
    raise ConfigError("--split='tset': the data has splits ['test', 'train', 'validation']")

  with pytest.raises(ConfigError, match="--split"):
    params_io.read_newest(tmp_path, "latest", read)
  assert reads == [6]


# 8. Refused runs leave nothing behind; messages say what was saved.

def test_a_refused_run_leaves_no_workdir_behind(tmp_path):
  workdir = tmp_path / "new" / f"run-{uuid.uuid4().hex[:6]}"
  with pytest.raises(ConfigError, match="config.mesh"):
    train.train_and_evaluate(tiny_train_config(**{"mesh.data": 3}), str(workdir))
  assert not workdir.exists()


def test_an_existing_workdir_is_left_as_it_was_when_the_run_is_refused(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(ConfigError):
    train.train_and_evaluate(tiny_train_config(**{"mesh.data": 3}), str(tmp_path))
  assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_divergence_before_any_save_says_nothing_was_saved(tmp_path):
  config = tiny_train_config(**{"optimizer.model_lr": 1e6, "log_every_steps": 1})
  with pytest.raises(run_log.TrainingDivergedError,
                     match="No checkpoint of this run was saved before it"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not checkpoint.CheckpointStore(tmp_path, read_only=True).checkpoints()


def test_the_report_expands_home_in_its_folders(tmp_path, monkeypatch, capsys):
  from m3oe_jax.report import report  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("HOME", str(tmp_path))
  assert report.main(["--workdir=~/no_such_sweep"]) == 2
  assert f"{tmp_path}/no_such_sweep" in capsys.readouterr().err
