"""Shared-Bottom, and the normalised blocks and
towers that the MMoE and PLE baselines share with it.

    z = Block(x)                                   F -> 128, shared by every head
    tower(d, t): l = relu(Norm(z @ W1 + b1)) @ W2 + b2     128 -> 8 -> 1

where Block(x) = relu(Norm(x @ W + b)) and Norm is BatchNorm (default, torch's
BatchNorm1d conventions) or LayerNorm. One tower per (domain, task) head; every
head runs on every row and each row keeps the heads of its own domain.

Parameter tree: embedding/<feature>, bottom/layer<k>/{kernel, bias, bn_scale,
bn_bias} (ln_scale, ln_bias with norm "layer"), towers/hidden/{...} [D, T, ...]
and towers/out/{kernel, bias} [D, T, ...]; with BatchNorm, batch_stats/<same
scope>/{bn_mean, bn_var}.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from m3oe_jax.errors import ConfigError
from m3oe_jax.models.base import RankingModel
from m3oe_jax.models.layers import (Dense, affine, at_least_float32, bank, layer_norm,
                                    linear_batch_norm, select_domain)

NORMS = ("batch", "layer")


def norm_block(module: nn.Module, x: jax.Array, features: int, norm: str,
               mask: jax.Array | None, use_running_average: bool) -> jax.Array:
  """relu(Norm(x @ kernel + bias)) with `module`'s parameters: kernel, bias and
  bn_scale, bn_bias (+ batch_stats bn_mean, bn_var) or ln_scale, ln_bias."""
  if norm == "layer":
    y = affine(module, x, features)
    scale = module.param("ln_scale", nn.initializers.ones, (features,))
    bias = module.param("ln_bias", nn.initializers.zeros, (features,))
    y = layer_norm(y, scale, bias)
  elif norm == "batch":
    y = linear_batch_norm(module, x, features, mask, use_running_average)
  else:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  return jax.nn.relu(y)


class NormMLP(nn.Module):
  """Blocks relu(Norm(x @ W + b)) over `widths`, named layer0, layer1, ...

  With `flat` and a single width, that one block's parameters sit directly in
  this module's scope (the reference's names for PLE experts and tower layers).
  Called as `NormMLP(...)(x, mask)`; `mask` [B] only matters to BatchNorm.
  """
  widths: Sequence[int]
  norm: str = "batch"
  use_running_average: bool = True
  flat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    if self.flat and len(self.widths) == 1:
      return norm_block(self, x, self.widths[0], self.norm, mask, self.use_running_average)
    for k, width in enumerate(self.widths):
      x = _NormBlock(width, self.norm, self.use_running_average, name=f"layer{k}")(x, mask)
    return x


class _NormBlock(nn.Module):
  features: int
  norm: str
  use_running_average: bool

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    return norm_block(self, x, self.features, self.norm, mask, self.use_running_average)


class NormTower(nn.Module):
  """`hidden`: NormMLP(widths, flat), then `out`: Dense -> 1; returns the logit [B]."""
  widths: Sequence[int]
  norm: str = "batch"
  use_running_average: bool = True

  @nn.compact
  def __call__(self, f: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    h = NormMLP(tuple(self.widths), self.norm, self.use_running_average, flat=True,
                name="hidden")(f, mask)
    return Dense(1, name="out")(h)[..., 0]


def head_bank(module_cls, num_domains: int, num_tasks: int, per_head_input: bool):
  """`module_cls` as a [D][T] bank called (input, mask). With `per_head_input` the
  input is [D, T, B, ...] (head (d, t) reads its own slice); otherwise every head
  reads the same [B, ...]. The mask is shared."""
  axes = (0, None) if per_head_input else (None, None)
  return bank(bank(module_cls, num_tasks, in_axes=axes), num_domains, in_axes=axes)


def own_domain(per_head: jax.Array, domain: jax.Array) -> jax.Array:
  """[D, T, B, ...] per-head values -> [B, T, ...], each row's own domain."""
  return select_domain(jnp.moveaxis(per_head, 2, 0), domain, axis=1)


def check_choice(model: str, field: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(f"config.model.{model}.{field}={value!r} must be one of {choices}")


def check_dims(model: RankingModel, **dims) -> None:
  """Width lists must be non-empty lists of positive integers."""
  for field, value in dims.items():
    if not isinstance(value, (tuple, list)) or len(value) == 0:
      raise ConfigError(f"config.model.{model.NAME}.{field}={value!r} must be a non-empty "
                       "list of positive integers")
  model.check_positive(**dims)


class SharedBottom(RankingModel):
  """A shared bottom MLP feeding one small tower per (domain, task) head.

  Options: `bottom_dims` (widths of the shared bottom, default (128,)),
  `tower_dims` (hidden widths of each tower, default (8,)) and `norm`
  ("batch", the default, or "layer") used in the bottom and the towers.
  No diagnostics.
  """
  bottom_dims: Sequence[int] = (128,)
  tower_dims: Sequence[int] = (8,)
  norm: str = "batch"

  NAME = "shared_bottom"
  TINY = {"bottom_dims": (16,), "tower_dims": (8,)}

  def check_options(self) -> None:
    super().check_options()
    check_dims(self, bottom_dims=self.bottom_dims, tower_dims=self.tower_dims)
    check_choice(self.NAME, "norm", self.norm, NORMS)

  @nn.compact
  def __call__(self, batch, train: bool = False) -> tuple[jax.Array, dict]:
    self.validate()
    mask = batch.get("mask")
    x = self.embed(batch)                                                  # [B, F]
    z = NormMLP(tuple(self.bottom_dims), self.norm, not train, name="bottom")(x, mask)
    towers = head_bank(NormTower, self.num_domains, self.num_tasks, per_head_input=False)
    every = towers(tuple(self.tower_dims), self.norm, not train, name="towers")(z, mask)
    logits = at_least_float32(own_domain(every, batch["domain"]))        # [B, T]
    return logits, {}
