import jax.numpy as jnp
import numpy as np
import pytest

from m3oe_jax import losses


def _bce(logit, label):
  p = 1 / (1 + np.exp(-logit))
  return -(label * np.log(p) + (1 - label) * np.log(1 - p))


def test_mdmt_is_sum_of_pair_means_and_absent_pairs_contribute_zero():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(10, 2)).astype(np.float32)
  labels = rng.integers(0, 2, (10, 2)).astype(np.float32)
  domain = np.array([0, 0, 0, 1, 1, 0, 1, 0, 0, 1], np.int32)  # domain 2 absent
  mask = np.ones(10, np.float32)
  mask[-2:] = 0.0  # padding rows are ignored
  got = losses.mdmt_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(domain),
                         jnp.asarray(mask), num_domains=3)
  expected = 0.0
  for d in (0, 1):
    rows = (domain == d) & (mask > 0)
    expected += _bce(logits[rows], labels[rows]).mean(axis=0).sum()
  assert np.isfinite(got)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_mean_loss_ignores_padding():
  logits = jnp.array([[0.3, -1.0], [2.0, 0.5], [9.0, 9.0]])
  labels = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
  mask = jnp.array([1.0, 1.0, 0.0])
  got = losses.mean_loss(logits, labels, jnp.zeros(3, jnp.int32), mask, 1)
  np.testing.assert_allclose(got, _bce(np.asarray(logits[:2]), np.asarray(labels[:2])).mean(),
                             rtol=1e-6)


@pytest.mark.parametrize("domains, tasks, expected", [
    (3, 2, "mdmt"), (1, 2, "mean"), (3, 1, "mean"), (4, 2, "mean")])
def test_reference_loss_is_grouped_only_for_three_domains_and_two_tasks(
    domains, tasks, expected):
  assert losses.resolve("reference", domains, tasks) == expected
  assert losses.resolve("mean", domains, tasks) == "mean"
  with pytest.raises(ValueError, match="config.optimizer.train_loss='sum'"):
    losses.resolve("sum", domains, tasks, "train_loss")
