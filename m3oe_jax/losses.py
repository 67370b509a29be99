"""Training losses, computed from logits, with a `mask` for padded rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def mdmt_loss(logits: jax.Array, labels: jax.Array, domain: jax.Array,
              mask: jax.Array, num_domains: int) -> jax.Array:
  """Sum over (domain, task) of the mean BCE of that domain's examples.

  A domain with no (unmasked) example in the batch contributes exactly 0.
  """
  bce = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))  # [B, T]
  members = jax.nn.one_hot(domain, num_domains, dtype=logits.dtype) * mask[:, None]
  sums = members.T @ bce                                                          # [D, T]
  counts = jnp.sum(members, axis=0)[:, None]                                      # [D, 1]
  return jnp.sum(jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 0.0))


def mean_loss(logits: jax.Array, labels: jax.Array, domain: jax.Array,
              mask: jax.Array, num_domains: int) -> jax.Array:
  """Plain mean BCE over all (unmasked) examples and tasks."""
  del domain, num_domains
  bce = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
  total = jnp.sum(bce * mask[:, None])
  return total / jnp.maximum(jnp.sum(mask) * logits.shape[-1], 1.0)


LOSSES = {"mdmt": mdmt_loss, "mean": mean_loss}


def get_loss(name: str):
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
  return LOSSES[name]
