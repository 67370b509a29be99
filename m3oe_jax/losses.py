"""Training losses, computed from logits, with a `mask` for padded rows.

Whatever the dtype of the logits (a bfloat16 model's, say), the sigmoid, the BCE
and the sums are float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from m3oe_jax.errors import ConfigError
from m3oe_jax.models.layers import at_least_float32


def group_bce(logits: jax.Array, labels: jax.Array, domain: jax.Array,
              mask: jax.Array, num_domains: int) -> jax.Array:
  """[D, T]: the mean BCE of each domain's (unmasked) examples, per task; 0 for a
  domain with no example in the batch."""
  logits = at_least_float32(logits)
  bce = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))    # [B, T]
  members = jax.nn.one_hot(domain, num_domains, dtype=jnp.float32) * mask[:, None]
  sums = members.T @ bce                                                          # [D, T]
  counts = jnp.sum(members, axis=0)[:, None]                                      # [D, 1]
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 0.0)


def mdmt_loss(logits: jax.Array, labels: jax.Array, domain: jax.Array,
              mask: jax.Array, num_domains: int, weights=None) -> jax.Array:
  """Sum over (domain, task) of the mean BCE of that domain's examples, task t's
  terms times `weights[t]` when given.

  A domain with no (unmasked) example in the batch contributes exactly 0.
  """
  groups = group_bce(logits, labels, domain, mask, num_domains)
  if weights is not None:
    groups = groups * jnp.asarray(weights, jnp.float32)
  return jnp.sum(groups)


def mean_loss(logits: jax.Array, labels: jax.Array, domain: jax.Array,
              mask: jax.Array, num_domains: int, weights=None) -> jax.Array:
  """Plain mean BCE over all (unmasked) examples and tasks, task t's terms times
  `weights[t]` when given (the same denominator)."""
  del domain, num_domains
  logits = at_least_float32(logits)
  bce = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
  if weights is not None:
    bce = bce * jnp.asarray(weights, jnp.float32)
  total = jnp.sum(bce * mask[:, None])
  return total / jnp.maximum(jnp.sum(mask) * logits.shape[-1], 1.0)


LOSSES = {"mdmt": mdmt_loss, "mean": mean_loss}
# 'reference': what the authors' M3oE trainer does, the grouped loss for exactly
# 3 domains and 2 tasks and the plain mean BCE for any other shape.
CHOICES = tuple(LOSSES) + ("reference",)


def check_name(name: str, field: str = "loss") -> None:
  """Refuses a `config.optimizer.<field>` that names no loss."""
  if not isinstance(name, str) or name not in CHOICES:
    raise ConfigError(f"config.optimizer.{field}={name!r}; expected one of {CHOICES}")


def resolve(name: str, num_domains: int, num_tasks: int, field: str = "loss") -> str:
  """The loss a config's `name` means for data of this shape ('mdmt' or 'mean')."""
  check_name(name, field)
  if name == "reference":
    return "mdmt" if (num_domains, num_tasks) == (3, 2) else "mean"
  return name


def task_losses(name: str, logits: jax.Array, labels: jax.Array, domain: jax.Array,
                mask: jax.Array, num_domains: int) -> jax.Array:
  """[T]: each task's part of loss `name`; they sum to the loss (up to rounding)."""
  num_tasks = logits.shape[-1]
  return jax.vmap(lambda w: get_loss(name)(logits, labels, domain, mask, num_domains, w))(
      jnp.eye(num_tasks, dtype=jnp.float32))


def uncertainty_loss(name: str, log_var: jax.Array, logits: jax.Array, labels: jax.Array,
                     domain: jax.Array, mask: jax.Array, num_domains: int,
                     weights=None) -> jax.Array:
  """Kendall, Gal & Cipolla (2018): sum_t exp(-s_t) L_t + s_t / 2, L_t task t's part
  of loss `name` (times `weights[t]` when given) and s_t = `log_var[t]` a learned
  log-variance.

  The s_t / 2 (log sigma_t) is the paper's form for a classification likelihood
  scaled by 1 / sigma_t^2, which a BCE is; the s_t variant comes from its
  regression form up to a factor 2. At s = 0 it is the unweighted loss."""
  per_task = task_losses(name, logits, labels, domain, mask, num_domains)
  if weights is not None:
    per_task = per_task * jnp.asarray(weights, jnp.float32)
  log_var = log_var.astype(jnp.float32)
  return jnp.sum(jnp.exp(-log_var) * per_task + 0.5 * log_var)


WEIGHTINGS = ("fixed", "uncertainty")
# The params entry of the learned log-variances: {WEIGHTING_SCOPE: {"log_var": [T]}}.
WEIGHTING_SCOPE = "task_weighting"


def model_params(params):
  """`params` without the task weighting's entry: what the model's apply takes."""
  if WEIGHTING_SCOPE not in params:
    return params
  return {k: v for k, v in params.items() if k != WEIGHTING_SCOPE}


def weighted_loss(name: str, weights=(), weighting: str = "fixed"):
  """(params, logits, labels, domain, mask, num_domains) -> the loss `name` with
  fixed task `weights` (() for all 1: the plain loss, bit for bit) or, for
  weighting 'uncertainty', `uncertainty_loss` with params[WEIGHTING_SCOPE] (and
  the fixed weights on its task losses)."""
  loss_fn = get_loss(name)
  fixed = tuple(float(w) for w in weights) or None

  def loss(params, logits, labels, domain, mask, num_domains):
    if weighting == "uncertainty":
      return uncertainty_loss(name, params[WEIGHTING_SCOPE]["log_var"], logits, labels,
                              domain, mask, num_domains, fixed)
    return loss_fn(logits, labels, domain, mask, num_domains, fixed)

  return loss


def get_loss(name: str):
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
  return LOSSES[name]
