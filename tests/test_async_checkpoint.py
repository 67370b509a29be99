"""Checkpoints written in the background (`config.async_checkpointing`)."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from m3oe_jax import checkpoint, params_io, sharding, train
from m3oe_jax.data import load_dataset
from m3oe_jax.errors import ConfigError
from m3oe_jax.trainer import Trainer
from tests.helpers import tiny_train_config


def _trainer_and_state():
  config = tiny_train_config()
  dataset = load_dataset(config.data)
  trainer = Trainer(config, dataset, sharding.make_mesh(config.mesh))
  state, _ = trainer.model_step(trainer.initial_state(0), trainer.train_batch(0))
  return config, dataset, trainer, state


def _assert_same_arrays(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_background_save_holds_its_steps_state_while_training_donates_it(tmp_path):
  config, dataset, trainer, state = _trainer_and_state()
  saved = jax.tree.map(np.asarray, state)
  with checkpoint.CheckpointStore(tmp_path, asynchronous=True) as store:
    store.save("latest", state, checkpoint.Progress(batch=1), config, dataset.schema)
    for position in range(1, 4):  # each step donates the buffers of the state before
      state, _ = trainer.model_step(state, trainer.train_batch(position))
  assert int(state.step) == 4
  restored, progress, _ = checkpoint.CheckpointStore(tmp_path, read_only=True).restore(
      "latest", trainer.abstract_state())
  assert int(restored.step) == 1 and progress.batch == 1
  _assert_same_arrays(restored, saved)


def test_leaving_on_an_error_completes_the_save_in_flight_and_reports_the_error(tmp_path):
  config, dataset, trainer, state = _trainer_and_state()
  with pytest.raises(KeyError, match="the run's own error"):
    with checkpoint.CheckpointStore(tmp_path, asynchronous=True) as store:
      store.save("latest", state, checkpoint.Progress(batch=1), config, dataset.schema)
      raise KeyError("the run's own error")
  restored, _, _ = checkpoint.CheckpointStore(tmp_path, read_only=True).restore(
      "latest", trainer.abstract_state())
  _assert_same_arrays(restored, state)


@pytest.mark.slow
def test_background_and_blocking_checkpoints_give_the_same_run(tmp_path):
  runs = {}
  for asynchronous in (True, False):
    workdir = tmp_path / str(asynchronous)
    config = tiny_train_config(async_checkpointing=asynchronous, num_epochs=2,
                               checkpoint_every_steps=7, compilation_cache_dir="")
    train.train_and_evaluate(config, str(workdir))
    store = checkpoint.CheckpointStore(workdir, read_only=True)
    runs[asynchronous] = (json.loads((workdir / "metrics.json").read_text()),
                          store.checkpoints(), store.read_meta("latest")["progress"],
                          params_io.load_params(workdir, "latest")[0])
  background, blocking = runs[True], runs[False]
  assert background[:3] == blocking[:3]
  assert [s for s, w in background[1] if w == "latest"] == [50, 49]  # the last two kept
  _assert_same_arrays(background[3], blocking[3])


@pytest.mark.parametrize("value", ["yes", 1])
def test_a_value_other_than_true_or_false_is_refused(value, tmp_path):
  config = ml_collections.ConfigDict({**tiny_train_config().to_dict(),
                                      "async_checkpointing": value})
  with pytest.raises(ConfigError, match="config.async_checkpointing"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()
