"""Task-loss weights: fixed per task, or learned (uncertainty weighting)."""

import copy
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m3oe_jax import (checkpoint, losses, optim, params_io, run_identity, sharding, step,
                      train)
from m3oe_jax.data import load_dataset
from m3oe_jax.errors import ConfigError
from m3oe_jax.trainer import Trainer
from tests.helpers import REPO, batch_of, cpu_env, tiny_model_and_params, tiny_train_config


def _inputs(seed=0, rows=12):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(rows, 2)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 2, (rows, 2)), jnp.float32)
  domain = jnp.asarray(rng.integers(0, 3, rows), jnp.int32)
  mask = jnp.asarray(np.r_[np.ones(rows - 2), np.zeros(2)], jnp.float32)
  return logits, labels, domain, mask


@pytest.mark.parametrize("name", ["mdmt", "mean"])
def test_default_weighting_is_the_plain_loss_bit_for_bit(name):
  args = _inputs()
  loss = losses.weighted_loss(name, tiny_train_config().optimizer.task_weights)
  plain = jax.jit(lambda *a: losses.get_loss(name)(*a, 3))(*args)
  weighted = jax.jit(lambda *a: loss({}, *a, 3))(*args)
  assert np.asarray(weighted).tobytes() == np.asarray(plain).tobytes()


def test_fixed_weights_give_the_hand_computed_loss():
  logits, labels, domain, mask = _inputs()
  bce = np.asarray(losses.optax.sigmoid_binary_cross_entropy(logits, labels))
  m, d = np.asarray(mask) > 0, np.asarray(domain)
  w = np.array([2.0, 0.5])
  mdmt = sum((bce[m & (d == k)].mean(axis=0) * w).sum() for k in range(3) if (m & (d == k)).any())
  mean = (bce[m] * w).sum() / (m.sum() * 2)
  for name, expected in (("mdmt", mdmt), ("mean", mean)):
    got = losses.weighted_loss(name, (2.0, 0.5))({}, logits, labels, domain, mask, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_zero_weight_gives_its_task_tower_no_gradient():
  model, params, dataset = tiny_model_and_params()
  batch = batch_of(dataset)
  loss = losses.weighted_loss("mdmt", (1.0, 0.0))

  def of(p):
    logits, _ = step.train_forward(model, {"params": p, "batch_stats": {}}, batch)
    return loss(p, logits, batch["labels"], batch["domain"], batch["mask"], 3)

  towers = jax.grad(of)(params)["towers"]
  for leaf in jax.tree.leaves(towers):
    assert np.all(np.asarray(leaf)[:, 1] == 0)
    assert np.any(np.asarray(leaf)[:, 0] != 0)


def test_uncertainty_loss_is_kendalls():
  args = _inputs()
  per_task = losses.task_losses("mdmt", *args, 3)
  np.testing.assert_allclose(per_task.sum(), losses.mdmt_loss(*args, 3), rtol=1e-6)
  s = jnp.array([0.3, -0.2])
  got = losses.weighted_loss("mdmt", (), "uncertainty")(
      {losses.WEIGHTING_SCOPE: {"log_var": s}}, *args, 3)
  np.testing.assert_allclose(got, np.sum(np.exp(-s) * per_task + s / 2), rtol=1e-6)


def _trainer(**overrides):
  config = tiny_train_config(**{"optimizer.task_weighting": "uncertainty",
                                "optimizer.schedule": "paper", **overrides})
  return Trainer(config, load_dataset(config.data),
                 sharding.make_mesh(config.mesh, jax.devices()[:1]))


@pytest.mark.parametrize("model", ["m3oe", "mmoe"])
def test_log_variances_are_model_weights_moved_by_the_model_step_only(model):
  trainer = _trainer(**{"model.name": model})
  state = trainer.initial_state(0)
  assert np.all(np.asarray(state.params[losses.WEIGHTING_SCOPE]["log_var"]) == 0)
  assert "task_weighting" not in state.variables()["params"]
  initial = trainer.task_weight_scalars(state)
  labels = optim.param_groups(state.params)
  assert labels[losses.WEIGHTING_SCOPE]["log_var"] == "model"
  after_arch, _ = trainer.arch_step(state, trainer.arch_batch(0))
  log_var = np.asarray(after_arch.params[losses.WEIGHTING_SCOPE]["log_var"])
  assert np.all(log_var == 0)
  after_model, _ = trainer.model_step(after_arch, trainer.train_batch(0))
  assert np.all(np.asarray(after_model.params[losses.WEIGHTING_SCOPE]["log_var"]) != 0)
  scalars = trainer.task_weight_scalars(after_model)
  assert sorted(scalars) == [f"task_weight/{t}" for t in sorted(trainer.schema.task_names)]
  assert all(w != 1 for w in scalars.values())
  assert initial == {k: 1.0 for k in scalars}


def test_an_uncertainty_run_trains_and_resumes_as_an_uninterrupted_one(tmp_path):
  config = tiny_train_config(**{"optimizer.task_weighting": "uncertainty", "num_epochs": 2})
  whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
  first = tiny_train_config(**{"optimizer.task_weighting": "uncertainty", "num_epochs": 1})
  train.train_and_evaluate(first, str(tmp_path / "resumed"))
  resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["test"] == whole["test"]
  variables, _, _ = params_io.load_params(str(tmp_path / "resumed"))
  assert losses.WEIGHTING_SCOPE not in variables["params"]


_SHARDED = """
import jax, numpy as np
from m3oe_jax import losses, sharding
from m3oe_jax.data import load_dataset
from m3oe_jax.trainer import Trainer
from tests.helpers import tiny_train_config
config = tiny_train_config(**{"mesh.data": 1, "mesh.model": 2, "mesh.embedding_axis": "model",
                              "optimizer.task_weighting": "uncertainty"})
trainer = Trainer(config, load_dataset(config.data), sharding.make_mesh(config.mesh))
state, _ = trainer.model_step(trainer.initial_state(0), trainer.train_batch(0))
log_var = state.params[losses.WEIGHTING_SCOPE]["log_var"]
assert log_var.sharding.is_fully_replicated, log_var.sharding
assert np.all(np.asarray(log_var) != 0)
print("ok")
"""


def test_log_variances_are_replicated_on_a_sharded_mesh():
  out = subprocess.run([sys.executable, "-c", _SHARDED], cwd=REPO, env=cpu_env(2),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.parametrize("field, value", [
    ("task_weights", (1.0, -1.0)), ("task_weights", (0.0, 0.0)),
    ("task_weights", (1.0, float("nan"))), ("task_weights", ("a", 1.0)),
    ("task_weighting", "learned")])
def test_bad_values_are_refused_naming_the_field(field, value):
  config = tiny_train_config()
  config.optimizer[field] = value
  with pytest.raises(ConfigError, match=rf"optimizer\.{field}"):
    train.check_config(config)


def test_weights_not_one_per_task_are_refused_by_the_trainer():
  with pytest.raises(ConfigError, match=r"optimizer\.task_weights.*3 weights.*2 tasks"):
    _trainer(**{"optimizer.task_weights": (1.0, 1.0, 1.0)})


def test_the_default_weighting_keeps_the_config_hash_of_runs_written_before_it():
  config = json.loads(tiny_train_config().to_json_best_effort())
  before = copy.deepcopy(config)
  del before["optimizer"]["task_weights"], before["optimizer"]["task_weighting"]
  assert run_identity.config_hash(config) == run_identity.config_hash(before)
  assert checkpoint.config_differences(before, config) == []
  config["optimizer"]["task_weighting"] = "uncertainty"
  assert run_identity.config_hash(config) != run_identity.config_hash(before)
  assert checkpoint.config_differences(before, config) == [
      "optimizer.task_weighting: checkpoint has 'fixed', config has 'uncertainty'"]
