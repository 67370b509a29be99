"""Trajectory golden tests: the trainer, given the authors' initial weights and row
orders, follows the authors' *trainers* step by step on real data.

Files in tests/assets/trajectory/ (reproduce/make_trajectory_goldens.py): the
authors' M3oE trainer (with its architecture-weight step) and their baselines'
trainer (MMoE, PLE; STAR on one task), each trained for a few epochs on the first
8,000 temporally ordered ratings of MovieLens-100K, with every step's loss, every
weight after every epoch, the validation AUCs, the early stopper's decisions and
the test metrics recorded. Here the same rows go through the MovieLens reader
(file-order split, vocabularies of all rows, as the authors' script), the torch
ids are mapped to ours by raw value, and `train_and_evaluate` runs with
`config.init_weights` and `config.train_order` from the file.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from m3oe_jax import models, train
from m3oe_jax.data import load_dataset
from reproduce import follow_authors as follow
from tests import event_files
from tests.golden import exact

ROOT = pathlib.Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets" / "trajectory"
ARCHIVE = ASSETS / "ml-100k-head8000.zip"
KINDS = ("m3oe", "mmoe", "ple", "star")
LOSS_RTOL, PARAM_RTOL, AUC_ATOL = 1e-5, 1e-4, 1e-7


def golden(kind: str) -> dict[str, np.ndarray]:
  return follow.read_golden(ASSETS / f"{kind}.npz")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  config = follow.data_config(ARCHIVE, tmp_path_factory.mktemp("trajectory_data"))
  return config, follow.all_rows(load_dataset(config))


def test_same_rows_labels_and_dense_values_as_the_authors_script(prepared):
  _, rows = prepared
  g = golden("m3oe")
  x, y = g["rows/x"], g["rows/y"]
  assert len(rows["labels"]) == len(x)
  np.testing.assert_array_equal(rows["labels"], y)
  np.testing.assert_array_equal(rows["domain"], x[:, -1].astype(np.int64))
  np.testing.assert_allclose(rows["dense"][:, 0], x[:, follow.TORCH_DENSE_COLUMN], rtol=0,
                             atol=1e-7)


def assert_close(got: dict, want: dict, where: str) -> None:
  """Each weight tensor within PARAM_RTOL of the authors': in norm, and in every
  element relative to the tensor's largest. (An element whose gradient is near
  Adam's epsilon moves by a step that amplifies float64 rounding; no element may
  drift far, but one element alone may not be held to 1e-4 of its own size.)"""
  assert sorted(got) == sorted(want), where
  for name, expected in want.items():
    actual = np.asarray(got[name], np.float64)
    actual = actual[:len(expected)] if actual.ndim else actual
    error = np.abs(actual - expected)
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    assert np.linalg.norm(error) <= PARAM_RTOL * max(np.linalg.norm(expected), 1e-12), (
        f"{where} {name}: off by {np.linalg.norm(error):.3g} in norm "
        f"(norm {np.linalg.norm(expected):.3g})")
    assert error.max() <= PARAM_RTOL * scale, (
        f"{where} {name}: an element off by {error.max():.3g} (largest element {scale:.3g})")


def run_ours(kind: str, folder: str) -> None:
  """Trains `kind` in float64 from `folder`'s init.npz and order.npz (written by the
  test) into `folder`/run, and records the weights at each epoch's end in
  `folder`/epochs.npz. Runs in its own process: float64 needs JAX_ENABLE_X64=1."""
  folder = pathlib.Path(folder)
  data = ml_collections.ConfigDict(json.loads((folder / "data.json").read_text()))
  config = follow.run_config(kind, golden(kind), data, folder / "init.npz",
                            folder / "order.npz", "float64")
  config.log_every_steps = 1
  config.checkpoint_every_steps = 10_000
  config.async_checkpointing = False
  config.prefetch_batches = 0
  weights = []
  save = train._save  # pylint: disable=protected-access

  def recording_save(store, which, state, progress, *args, **kwargs):
    if which == "latest" and progress.batch == 0:
      named = {f"params/{k}": v for k, v in models.export_weights(state.params).items()}
      named.update({f"batch_stats/{k}": np.asarray(v) for k, v in
                    models.export_weights(state.batch_stats).items()})
      weights.append(named)
    return save(store, which, state, progress, *args, **kwargs)

  train._save = recording_save  # pylint: disable=protected-access
  with exact():
    train.train_and_evaluate(config, str(folder / "run"))
  np.savez(folder / "epochs.npz", **{f"epoch{e}/{k}": v for e, named in enumerate(weights)
                                     for k, v in named.items()})


@pytest.mark.parametrize("kind", KINDS)
def test_the_trainer_follows_the_authors_trainer(kind, prepared, tmp_path):
  data, rows = prepared
  g = golden(kind)
  schema = load_dataset(data).schema
  vocab_sizes = schema.vocab_sizes
  folder = tmp_path
  follow.write_start(g, rows, vocab_sizes, folder)
  (folder / "data.json").write_text(data.to_json())
  env = {**os.environ, "JAX_ENABLE_X64": "1", "PYTHONPATH": str(ROOT)}
  code = f"from tests.test_trajectory import run_ours; run_ours({kind!r}, {str(folder)!r})"
  done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  workdir = folder / "run"

  losses = [v for _, v in sorted(event_files.scalars(workdir / "tensorboard")["train/loss"])]
  want = g["loss/train"]
  assert len(losses) == len(want)
  # TensorBoard keeps float32 scalars: 1e-5 of a loss near 4 is 100 of its steps.
  np.testing.assert_allclose(losses, want, rtol=LOSS_RTOL, err_msg=f"{kind}: per-step loss")

  with np.load(folder / "epochs.npz") as f:
    saved = {k: f[k] for k in f.files}
  epochs = len(g["validation/auc"])
  assert {k.split("/")[0] for k in saved} == {f"epoch{e}" for e in range(epochs)}
  for epoch in range(epochs):
    assert_close(follow.section(saved, f"epoch{epoch}"),
                 follow.mapped_weights(g, f"epoch{epoch}", rows, vocab_sizes),
                 f"{kind} epoch {epoch}:")

  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  order = follow.pair_order(schema, str(g["config/task"]))  # the authors' t-major order
  ours = [[r["validation"]["pairs"][p]["auc"] for p in order] for r in records]
  # sklearn's AUC (trapezoids) and ours (ranks) round differently: ~1e-9.
  np.testing.assert_allclose(ours, g["validation/auc"], rtol=0, atol=AUC_ATOL)

  result = json.loads((workdir / "metrics.json").read_text())
  stopped = bool(g["early_stopping/stopped"][-1])
  assert result["tested_weights"] == ("best" if stopped else "last")
  assert result["best_epoch"] == int(np.argmax(g["validation/auc"].mean(axis=1)))
  test = [result["test"]["pairs"][p]["auc"] for p in order]
  np.testing.assert_allclose(test, g["test/auc"], rtol=0, atol=AUC_ATOL)
  test_logloss = [result["test"]["pairs"][p]["logloss"] for p in order]
  np.testing.assert_allclose(test_logloss, g["test/logloss"], rtol=1e-7)


# --- the options the comparison rests on, refused clearly when misused ----------------


def tiny_config(tmp_path, **overrides):
  from m3oe_jax.configs import synthetic  # pylint: disable=g-import-not-at-top
  config = synthetic.get_config("tiny")
  config.num_epochs = 1
  config.compilation_cache_dir = ""
  for key, value in overrides.items():
    config[key] = value
  return config


def expect_config_error(config, tmp_path, *words):
  from m3oe_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError) as caught:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(caught.value)
  assert "\n" not in message and all(w in message for w in words), message
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_order_file_that_is_not_a_permutation_is_refused(tmp_path):
  config = tiny_config(tmp_path)
  rows = len(load_dataset(config.data).splits["train"])
  np.savez(tmp_path / "order.npz", **{"train/0": np.arange(rows - 1)})
  config.train_order = str(tmp_path / "order.npz")
  expect_config_error(config, tmp_path, "config.train_order", "train/0", "permutation")


def test_an_order_file_without_an_epoch_the_run_trains_is_refused(tmp_path):
  config = tiny_config(tmp_path)
  config.num_epochs = 2
  rows = len(load_dataset(config.data).splits["train"])
  reverse = np.arange(rows)[::-1].copy()
  np.savez(tmp_path / "order.npz", **{"train/0": reverse, "arch/0": reverse})
  config.train_order = str(tmp_path / "order.npz")
  expect_config_error(config, tmp_path, "config.train_order", "no permutation train/1",
                      "config.num_epochs")


def test_initial_weights_of_another_shape_are_refused_by_name(tmp_path):
  np.savez(tmp_path / "init.npz", **{"params/embedding/f0": np.zeros((3, 2))})
  config = tiny_config(tmp_path, init_weights=str(tmp_path / "init.npz"))
  expect_config_error(config, tmp_path, "config.init_weights", "missing weights")


def test_initial_weights_are_the_weights_trained_from(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from m3oe_jax import sharding  # pylint: disable=g-import-not-at-top
  from m3oe_jax.trainer import Trainer  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path)
  dataset = load_dataset(config.data)
  model = models.build_model(config.model, dataset.schema)
  start = models.init_variables(model, dataset.schema, jax.random.key(7))
  named = {f"params/{k}": v for k, v in models.export_weights(start["params"]).items()}
  np.savez(tmp_path / "init.npz", **named)
  config.init_weights = str(tmp_path / "init.npz")
  state = Trainer(config, dataset, sharding.make_mesh(config.mesh)).initial_state(config.seed)
  got = models.export_weights(state.params)
  assert sorted(got) == sorted(k[len("params/"):] for k in named)
  for name, value in got.items():
    np.testing.assert_array_equal(value, named[f"params/{name}"], err_msg=name)


def test_float64_without_64_bit_jax_is_refused_in_one_line(tmp_path):
  config = tiny_config(tmp_path)
  config.model.dtype = "float64"
  expect_config_error(config, tmp_path, "config.model.dtype", "JAX_ENABLE_X64=1")


def test_a_model_swapped_after_its_training_setup_is_refused(tmp_path):
  config = tiny_config(tmp_path)
  config.model.name = "mmoe"
  expect_config_error(config, tmp_path, "config.model.name='mmoe'", "model=mmoe",
                      "setup_for_model")
  config.setup_for_model = "mmoe"  # on purpose: MMoE with M3oE's optimiser
  from m3oe_jax import config_utils  # pylint: disable=g-import-not-at-top
  config_utils.check_training_setup(config)
