"""Training losses, computed from logits, with a `mask` for padded rows.

Whatever the dtype of the logits (a bfloat16 model's, say), the sigmoid, the BCE
and the sums are float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from m3oe_jax.errors import ConfigError


def group_bce(logits: jax.Array, labels: jax.Array, domain: jax.Array,
              mask: jax.Array, num_domains: int) -> jax.Array:
  """[D, T]: the mean BCE of each domain's (unmasked) examples, per task; 0 for a
  domain with no example in the batch."""
  logits = logits.astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))   # [B, T]
  members = jax.nn.one_hot(domain, num_domains, dtype=jnp.float32) * mask[:, None]
  sums = members.T @ bce                                                          # [D, T]
  counts = jnp.sum(members, axis=0)[:, None]                                      # [D, 1]
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 0.0)


def mdmt_loss(logits: jax.Array, labels: jax.Array, domain: jax.Array,
              mask: jax.Array, num_domains: int) -> jax.Array:
  """Sum over (domain, task) of the mean BCE of that domain's examples.

  A domain with no (unmasked) example in the batch contributes exactly 0.
  """
  return jnp.sum(group_bce(logits, labels, domain, mask, num_domains))


def mean_loss(logits: jax.Array, labels: jax.Array, domain: jax.Array,
              mask: jax.Array, num_domains: int) -> jax.Array:
  """Plain mean BCE over all (unmasked) examples and tasks."""
  del domain, num_domains
  logits = logits.astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
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


def get_loss(name: str):
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
  return LOSSES[name]
