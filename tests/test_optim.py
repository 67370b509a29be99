import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from m3oe_jax import optim, step
from tests.helpers import batch_of, tiny_model_and_params


def _optimizer_config(schedule):
  return ml_collections.ConfigDict(dict(
      schedule=schedule, model_lr=1e-2, arch_lr=1e-2, weight_decay=1e-5,
      train_loss="mdmt", arch_loss="mean", arch_every_steps=1))


def _split(params):
  arch = {k: np.asarray(v) for k, v in params["arch"].items()}
  model = [np.asarray(x) for x in jax.tree.leaves({k: v for k, v in params.items()
                                                   if k != "arch"})]
  return arch, model


def _same_bits(a, b):
  return all(x.tobytes() == y.tobytes() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _steps(schedule):
  model, params, dataset = tiny_model_and_params()
  opts = optim.make_optimizers(_optimizer_config(schedule), params)
  state = step.create_train_state({"params": params}, opts)
  model_step = jax.jit(step.make_model_step(model, opts, "mdmt", 3))
  arch_step = jax.jit(step.make_arch_step(model, opts, "mean", 3))
  return state, model_step, arch_step, dataset


@pytest.mark.parametrize("schedule", ["paper", "darts"])
def test_frozen_groups_do_not_move_bit_for_bit(schedule):
  state, model_step, arch_step, dataset = _steps(schedule)
  batches = [batch_of(dataset, 64), jax.tree.map(lambda x: x[::-1], batch_of(dataset, 64))]
  for i in range(6):
    before_arch, before_model = _split(state.params)
    if i % 3 == 2:
      state, _ = arch_step(state, batches[i % 2])
      after_arch, after_model = _split(state.params)
      assert _same_bits(before_model, after_model), "arch step moved a model weight"
      assert not _same_bits(before_arch, after_arch), "arch step did not train arch"
    else:
      state, _ = model_step(state, batches[i % 2])
      after_arch, after_model = _split(state.params)
      assert _same_bits(before_arch, after_arch), "model step moved an arch weight"
      assert not _same_bits(before_model, after_model)


def test_reference_schedule_trains_arch_weights_in_the_main_step():
  state, model_step, arch_step, dataset = _steps("reference")
  before, _ = _split(state.params)
  state, _ = model_step(state, batch_of(dataset))
  after, _ = _split(state.params)
  assert all(before[k] != after[k] for k in before)
  _, before_model = _split(state.params)
  state, _ = arch_step(state, batch_of(dataset))
  _, after_model = _split(state.params)
  assert _same_bits(before_model, after_model)


def test_one_adam_over_both_groups_would_move_a_zero_gradient_group():
  """Why the frozen group needs its own set_to_zero transform."""
  params = {"arch": jnp.ones(3), "model": jnp.ones(3)}
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  ones = jax.tree.map(jnp.ones_like, params)
  updates, opt_state = tx.update(ones, opt_state, params)
  params = optax.apply_updates(params, updates)
  frozen_arch = params["arch"]
  grads = {"arch": jnp.zeros(3), "model": jnp.ones(3)}
  updates, opt_state = tx.update(grads, opt_state, params)
  assert not np.array_equal(optax.apply_updates(params, updates)["arch"], frozen_arch)


def test_adam_with_l2_matches_torch_adam_with_weight_decay():
  """torch.optim.Adam: g += wd * p; m, v moments; p -= lr * m_hat / (sqrt(v_hat) + eps)."""
  lr, wd, b1, b2, eps = 1e-2, 1e-2, 0.9, 0.999, 1e-8
  rng = np.random.default_rng(0)
  p = rng.normal(size=5)
  grads = rng.normal(size=(4, 5))
  tx = optim.adam_with_l2(lr, wd)
  params = jnp.asarray(p, jnp.float32)
  opt_state = tx.init(params)
  m = v = np.zeros(5)
  for t, g in enumerate(grads, start=1):
    g_l2 = g + wd * p
    m = b1 * m + (1 - b1) * g_l2
    v = b2 * v + (1 - b2) * g_l2 ** 2
    p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    updates, opt_state = tx.update(jnp.asarray(g, jnp.float32), opt_state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params, p, rtol=1e-5)


def test_unknown_schedule_is_rejected():
  _, params, _ = tiny_model_and_params()
  with pytest.raises(ValueError, match="config.optimizer.schedule"):
    optim.make_optimizers(_optimizer_config("sgd"), params)
