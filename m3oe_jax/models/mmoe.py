"""MMoE: shared experts, and for every
(domain, task) head a softmax gate on the input and a tower.

    expert e:   S_e(x) = Block(...Block(x))               F -> fcn_dims..., e < E
    gate (d,t): g = softmax(x @ G[d,t] + c[d,t])           [B, E]
    f[d,t]    = sum_e g[e] S_e(x)                          [B, h], h = fcn_dims[-1]
    tower(d,t): l = relu(Norm(f @ W1 + b1)) @ W2 + b2      h -> h -> 1

Block is relu(LayerNorm(x @ W + b)); the tower's Norm is torch-style BatchNorm
(`tower_norm="batch"`, the default: the authors' `MMOE` class behind their baseline
numbers) or LayerNorm (`tower_norm="layer"`: the spec's text, another training).

Parameter tree: embedding/<feature>, experts/layer<k>/{kernel, bias, ln_scale,
ln_bias} [E, ...], gates/{kernel, bias} [D, T, ...], towers/hidden/{kernel, bias,
ln_scale, ln_bias | bn_scale, bn_bias} and towers/out/{kernel, bias} [D, T, ...].
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from m3oe_jax.models.base import RankingModel
from m3oe_jax.models.layers import Dense, MLP, at_least_float32, bank, like, softmax32
from m3oe_jax.models.shared_bottom import (NORMS, NormTower, check_choice, check_dims,
                                           head_bank, own_domain)


class MMoE(RankingModel):
  """Multi-gate mixture of experts with one gate and tower per (domain, task).

  Options: `fcn_dims` (expert widths, default (256, 64); the tower is
  fcn_dims[-1] wide), `num_experts` (default 4) and `tower_norm` ("batch", the
  default, as the authors' class, or "layer").
  Diagnostics: `gates` [B, T, E], each row's own-domain gate weights.
  """
  fcn_dims: Sequence[int] = (256, 64)
  num_experts: int = 4
  tower_norm: str = "batch"

  NAME = "mmoe"
  TINY = {"fcn_dims": (16, 8), "num_experts": 3}

  def check_options(self) -> None:
    super().check_options()
    check_dims(self, fcn_dims=self.fcn_dims)
    self.check_positive(num_experts=self.num_experts)
    check_choice(self.NAME, "tower_norm", self.tower_norm, NORMS)

  @nn.compact
  def __call__(self, batch, train: bool = False) -> tuple[jax.Array, dict]:
    self.validate()
    widths = tuple(self.fcn_dims)
    mask = batch.get("mask")
    x = self.embed(batch)                                                    # [B, F]

    experts = bank(MLP, self.num_experts)(widths, name="experts")(x)         # [E, B, h]
    gate_bank = bank(bank(Dense, self.num_tasks), self.num_domains)
    gate_logits = gate_bank(self.num_experts, name="gates")(x)               # [D, T, B, E]
    gates = softmax32(gate_logits)                                           # float32
    fused = jnp.einsum("dtbe,ebh->dtbh", like(gates, experts), experts)      # [D, T, B, h]

    towers = head_bank(NormTower, self.num_domains, self.num_tasks, per_head_input=True)
    every = towers((widths[-1],), self.tower_norm, not train, name="towers")(fused, mask)
    logits = at_least_float32(own_domain(every, batch["domain"]))          # [B, T]
    return logits, {"gates": own_domain(gates, batch["domain"])}             # [B, T, E]
