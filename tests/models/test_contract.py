"""The model contract, checked for every registered model.

For each name in `MODELS`: output shapes and diagnostics follow the contract;
training steps lower the loss on a fixed batch; named weights (and BatchNorm
statistics) export and import unchanged; a checkpoint saved mid-run resumes to
exactly the state of the uninterrupted run; and 8 simulated devices with the
tables row-sharded (over 'data' on 8x1, over 'model' on 2x4) give the 1-device
loss, gradients and BatchNorm statistics (one subprocess for all models:
simulated devices need XLA_FLAGS before jax starts; tests/contract_run.py says
why gradients rather than parameters).
"""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from m3oe_jax import checkpoint, sharding
from m3oe_jax.data import load_dataset
from m3oe_jax.models import MODELS, export_weights, import_weights
from m3oe_jax.trainer import Trainer
from tests import contract_run
from tests.helpers import cpu_env

REPO = pathlib.Path(__file__).resolve().parents[2]
NAMES = sorted(MODELS)


def _trainer(name, **overrides):
  config = contract_run.tiny_config(name, **overrides)
  dataset = load_dataset(config.data)
  return Trainer(config, dataset, sharding.make_mesh(config.mesh)), config


@pytest.fixture(scope="module", params=NAMES)
def trained(request):
  trainer, config = _trainer(request.param)
  state = trainer.initial_state(config.seed)
  batch = trainer.train_batch(0)
  losses = []
  for _ in range(contract_run.STEPS):
    state, out = trainer.model_step(state, batch)
    losses.append(float(out["loss"]))
  return request.param, trainer, config, state, losses


def test_outputs_follow_the_contract(trained):
  name, trainer, _, state, _ = trained
  batch = trainer.dataset.splits["validation"].take(np.arange(32))
  logits, aux = trainer.model.apply(state.variables(), batch, train=False)
  assert logits.shape == (32, trainer.schema.num_tasks) and logits.dtype == np.float32
  assert np.all(np.isfinite(logits))
  for key, value in aux.items():
    if isinstance(value, dict):
      assert all(np.ndim(v) == 0 for v in value.values()), key
    else:
      assert value.shape[0] == 32, key
  metrics, diagnostics = trainer.evaluate(state.variables(), "validation")
  assert metrics["mean_auc"] is not None
  assert set(diagnostics) == set(aux)


def test_training_steps_lower_the_loss_on_a_fixed_batch(trained):
  name, _, _, _, losses = trained
  assert losses[-1] < losses[0] - 0.01, (name, losses)


def test_weights_export_and_import_unchanged(trained):
  _, trainer, _, state, _ = trained
  variables = state.variables()
  again = {kind: import_weights(export_weights(tree, trainer.schema), tree)
           for kind, tree in variables.items()}
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  batch = trainer.dataset.splits["test"].take(np.arange(16))
  np.testing.assert_array_equal(trainer.model.apply(variables, batch)[0],
                                trainer.model.apply(again, batch)[0])


def test_checkpoint_resumes_exactly(trained, tmp_path):
  name, trainer, config, _, _ = trained
  straight = trainer.initial_state(config.seed)
  for position in range(4):
    straight, _ = trainer.model_step(straight, trainer.train_batch(position))

  state = trainer.initial_state(config.seed)
  for position in range(2):
    state, _ = trainer.model_step(state, trainer.train_batch(position))
  store = checkpoint.CheckpointStore(tmp_path)
  store.save("latest", state, checkpoint.Progress(batch=2), config, trainer.schema)
  del state  # resume from the files alone
  state, progress, _ = checkpoint.CheckpointStore(tmp_path).restore(
      "latest", trainer.abstract_state())
  for position in range(progress.batch, 4):
    state, _ = trainer.model_step(state, trainer.train_batch(position))
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_a_table_axis_that_matches_nothing_is_refused(monkeypatch):
  from m3oe_jax.models.m3oe import M3oE
  monkeypatch.setattr(M3oE, "TABLE_SCOPES", ("tables",))
  with pytest.raises(ValueError, match="config.mesh.embedding_axis='data'.*no \\[rows, width\\]"):
    _trainer("m3oe", **{"mesh.embedding_axis": "data"})


@pytest.fixture(scope="module")
def sharded_runs():
  proc = subprocess.run([sys.executable, "-m", "tests.contract_run", *NAMES], cwd=REPO,
                        env=cpu_env(8), capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", sorted(contract_run.LAYOUTS))
@pytest.mark.parametrize("name", NAMES)
def test_eight_devices_with_row_sharded_tables_match_one_device(sharded_runs, name, layout):
  result = sharded_runs[f"{name}/{layout}"]
  assert result["tables_sharded"] > 0
  assert result["loss_difference"] < contract_run.TOLERANCE, result
  assert result["max_gradient_difference"] < contract_run.TOLERANCE, result
  assert result["max_batch_stats_difference"] < contract_run.TOLERANCE, result
