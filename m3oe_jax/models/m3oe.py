"""M3oE, equation by equation as in the authors' code (docs/models.md).

Parameter tree (flattened with '/', the names of the authors' weights):
  embedding/<feature>, star/*, star_mlp/*, skip/*, shared_experts/layer<k>/*,
  domain_experts/layer<k>/*, task_experts/layer<k>/*, gates/*, towers/hidden/*,
  towers/out/*, arch/{bal_d, bal_t, exp_d, exp_t}.
Every bank (experts, gates, towers) is one module vmapped over its members.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from m3oe_jax.errors import ConfigError
from m3oe_jax.models.base import RankingModel
from m3oe_jax.models.layers import (Block, Dense, MLP, Star, Tower, at_least_float32, bank, like,
                                    select_domain, softmax32)

ARCH_NAMES = ("bal_d", "bal_t", "exp_d", "exp_t")


class ArchWeights(nn.Module):
  """The four architecture logits (bal_d, bal_t, exp_d, exp_t), each with its own
  initial value."""
  init_values: Sequence[float]

  @nn.compact
  def __call__(self) -> dict[str, jax.Array]:
    return {name: self.param(name, nn.initializers.constant(value), ())
            for name, value in zip(ARCH_NAMES, self.init_values)}


def balance_weights(logit: jax.Array, n: int) -> jax.Array:
  """[n, n] weights: sigmoid(logit) on the diagonal, the rest shared equally.

  With n = 1 there are no others, and the lone view is still scaled by
  sigmoid(logit), as in the authors' code (so the logit still trains).
  """
  a = jax.nn.sigmoid(logit)
  if n == 1:
    return at_least_float32(jnp.reshape(a, (1, 1)))
  eye = jnp.eye(n, dtype=at_least_float32(a).dtype)
  return eye * a + (1.0 - eye) * (1.0 - a) / (n - 1)


class M3oE(RankingModel):
  """Multi-domain multi-task mixture of experts.

  Options: `fcn_dims` [h1, h2, expert widths...] (h2 == fcn_dims[2]), the number of
  shared experts, the initial values of the four architecture logits in the order
  (bal_d, bal_t, exp_d, exp_t), and whether the gates see the representation
  through a stopped gradient (as the authors' code does).
  Diagnostics: `gates` [B, T, E] and the four `fusion_weights` after their sigmoid.
  """
  fcn_dims: Sequence[int] = (512, 256, 256, 64)
  num_shared_experts: int = 4
  arch_init: Sequence[float] = (1.0, 1.0, 1.0, 1.0)
  gate_stop_gradient: bool = True

  NAME = "m3oe"
  TINY = {"fcn_dims": (32, 16, 16, 8)}

  def check_options(self) -> None:
    """Refuses dimensions the reference would mis-handle or crash on."""
    super().check_options()
    dims = tuple(self.fcn_dims)
    if len(dims) < 4:
      raise ConfigError(
          f"config.model.m3oe.fcn_dims={dims} needs at least 4 entries: [h1, h2, expert "
          "dims...] (reference: [512, 256, 256, 64])")
    self.check_positive(fcn_dims=dims, num_shared_experts=self.num_shared_experts)
    if dims[2] != dims[1]:
      raise ConfigError(
          f"config.model.m3oe.fcn_dims={dims}: the expert MLP's input fcn_dims[2]={dims[2]} "
          f"must equal the star output fcn_dims[1]={dims[1]}")
    if len(self.arch_init) != len(ARCH_NAMES):
      raise ConfigError(f"config.model.m3oe.arch_init={tuple(self.arch_init)} needs one "
                        f"initial value for each of {ARCH_NAMES}")

  def setup(self):
    self.validate()
    h1, h2 = self.fcn_dims[0], self.fcn_dims[1]
    expert_widths = tuple(self.fcn_dims[3:])
    self.embedding = self.embeddings()
    self.star = Star(self.num_domains, h1)
    self.star_mlp = Block(h2)
    self.skip = Block(h2)
    self.shared_experts = bank(MLP, self.num_shared_experts)(expert_widths)
    self.domain_experts = bank(MLP, self.num_domains)(expert_widths)
    self.task_experts = bank(MLP, self.num_tasks)(expert_widths)
    self.gates = bank(bank(Dense, self.num_tasks), self.num_domains)(
        self.num_shared_experts)
    self.towers = bank(bank(Tower, self.num_tasks, in_axes=0), self.num_domains)()
    self.arch = ArchWeights(tuple(self.arch_init))

  def __call__(self, batch, train: bool = False) -> tuple[jax.Array, dict]:
    del train  # no BatchNorm or dropout
    domain = batch["domain"]
    x = self.embedding(batch["sparse"], batch["dense"])                 # [B, F]
    h = self.star_mlp(self.star(x, domain)) + self.skip(x)              # [B, h2]

    shared = self.shared_experts(h)                                     # [E, B, o]
    domain_out = self.domain_experts(h)                                 # [D, B, o]
    task_out = self.task_experts(h)                                     # [T, B, o]

    gate_input = jax.lax.stop_gradient(h) if self.gate_stop_gradient else h
    gate_logits = jnp.moveaxis(self.gates(gate_input), 2, 0)            # [B, D, T, E]
    gates = softmax32(select_domain(gate_logits, domain, axis=1))       # [B, T, E] float32

    arch = self.arch()
    fusion = {name: jax.nn.sigmoid(logit) for name, logit in arch.items()}
    dom_mix = balance_weights(arch["bal_d"], self.num_domains)          # [D, D]
    task_mix = balance_weights(arch["bal_t"], self.num_tasks)           # [T, T]
    own_mix = jax.nn.one_hot(domain, self.num_domains, dtype=h.dtype) @ like(dom_mix, h)
    own_domain = jnp.einsum("bj,jbo->bo", own_mix, domain_out)          # [B, o]
    task_views = jnp.einsum("tj,jbo->tbo", like(task_mix, h), task_out)  # [T, B, o]
    fused = (jnp.einsum("bte,ebo->tbo", like(gates, h), shared)
             + like(fusion["exp_d"], h) * own_domain[None]
             + like(fusion["exp_t"], h) * task_views)                   # [T, B, o]

    every_tower = self.towers(fused)                                    # [D, T, B]
    logits = select_domain(jnp.transpose(every_tower, (2, 0, 1)), domain, axis=1)
    logits = at_least_float32(logits)
    aux = {"gates": gates, "fusion_weights": fusion}
    return logits, aux
