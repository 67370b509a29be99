"""PLE: progressive layered extraction with the
D x T (domain, task) heads as its "tasks", every layer with torch-style BatchNorm.

One extraction level (CGC), for head (d, t) with input X[d,t] and shared input X_s:

    specific experts  A[d,t,j] = BlockBN(X[d,t])        j < m     (F -> expert_dims...)
    shared experts    C[k]     = BlockBN(X_s)           k < s
    gate (d,t)        g = softmax(BN(X[d,t] @ Q[d,t] + q[d,t]))    over m + s entries
    output (d,t)      f[d,t] = sum_j g[j] A[d,t,j] + sum_k g[m+k] C[k]
    (non-last level)  shared gate g_s = softmax(BN(X_s @ Q_s + q_s)) over the G*m + s
                      experts; shared output f_s = g_s . [A (heads t-major), C]
    tower (d,t)       l = BlockBN(...(f[d,t])) @ W2 + b2     (tower_dims... -> 1)

At level 0 every input is x; level l + 1 reads level l's outputs (head (d, t)
its own f[d,t], the shared experts and shared gate f_s).

Parameter tree (level 0, the only level by default): specific_experts/{kernel,
bias, bn_scale, bn_bias} [D, T, m, ...], shared_experts/{...} [s, ...],
gates/{...} [D, T, ...], towers/hidden/{...} and towers/out/{kernel, bias}
[D, T, ...]; BatchNorm statistics batch_stats/<scope>/{bn_mean, bn_var}.
With several levels, level 0 also has shared_gate/{...} and level l >= 1 lives
under level<l>/ with the same names. With several expert (tower) widths, the
expert (tower hidden) layers are named layer<k> inside those scopes.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from m3oe_jax.models.base import RankingModel
from m3oe_jax.models.layers import at_least_float32, bank, like, linear_batch_norm, softmax32
from m3oe_jax.models.shared_bottom import NormMLP, NormTower, check_dims, head_bank, own_domain


class BNGate(nn.Module):
  """softmax(BatchNorm(x @ kernel + bias)), float32; parameters kernel, bias, bn_scale,
  bn_bias."""
  features: int
  use_running_average: bool

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    return softmax32(linear_batch_norm(self, x, self.features, mask,
                                       self.use_running_average))


def extraction_level(head_in, shared_in, mask, *, num_domains: int, num_tasks: int,
                     num_specific: int, num_shared: int, expert_dims: tuple[int, ...],
                     use_running_average: bool, per_head_input: bool, last: bool):
  """One CGC level, creating its modules in the calling module's scope.

  head_in: [B, F] shared by all heads (`per_head_input=False`) or [D, T, B, F];
  shared_in: [B, F]. Returns (head outputs [D, T, B, x], shared output [B, x] or
  None at the last level, gate weights [D, T, B, m + s]).
  """
  d, t, m, s = num_domains, num_tasks, num_specific, num_shared
  specific_bank = head_bank(bank(NormMLP, m), d, t, per_head_input)
  specific = specific_bank(expert_dims, "batch", use_running_average, True,
                           name="specific_experts")(head_in, mask)        # [D, T, m, B, x]
  shared = bank(NormMLP, s)(expert_dims, "batch", use_running_average, True,
                            name="shared_experts")(shared_in, mask)       # [s, B, x]
  gates = head_bank(BNGate, d, t, per_head_input)(
      m + s, use_running_average, name="gates")(head_in, mask)            # [D, T, B, m+s]
  mix = like(gates, shared)
  head_out = (jnp.einsum("dtbj,dtjbx->dtbx", mix[..., :m], specific)
              + jnp.einsum("dtbk,kbx->dtbx", mix[..., m:], shared))       # [D, T, B, x]
  if last:
    return head_out, None, gates
  # The shared gate's entries follow the reference's flat head order
  # i = t * D + d (each head's m experts in turn), then the shared experts.
  every_expert = jnp.concatenate([
      jnp.swapaxes(specific, 0, 1).reshape((t * d * m,) + specific.shape[3:]), shared])
  shared_gate = BNGate(d * t * m + s, use_running_average, name="shared_gate")(shared_in, mask)
  shared_out = jnp.einsum("bn,nbx->bx", like(shared_gate, shared), every_expert)  # [B, x]
  return head_out, shared_out, gates


class _Level(nn.Module):
  """Scope `level<l>` holding an extraction level after the first."""
  num_domains: int
  num_tasks: int
  num_specific: int
  num_shared: int
  expert_dims: tuple[int, ...]
  use_running_average: bool
  last: bool

  @nn.compact
  def __call__(self, head_in, shared_in, mask):
    return extraction_level(
        head_in, shared_in, mask, num_domains=self.num_domains, num_tasks=self.num_tasks,
        num_specific=self.num_specific, num_shared=self.num_shared,
        expert_dims=self.expert_dims, use_running_average=self.use_running_average,
        per_head_input=True, last=self.last)


class PLE(RankingModel):
  """Progressive layered extraction over the (domain, task) heads.

  Options: `num_levels` (extraction levels, default 1), `num_specific_experts`
  (m, experts per head, default 2), `num_shared_experts` (s, default 1),
  `expert_dims` (expert widths, default (16,)) and `tower_dims` (tower hidden
  widths, default (8,)).
  Diagnostics: `gates` [B, T, m + s], each row's own-domain gate weights at the
  last level (own specific experts first, then the shared ones).
  """
  num_levels: int = 1
  num_specific_experts: int = 2
  num_shared_experts: int = 1
  expert_dims: Sequence[int] = (16,)
  tower_dims: Sequence[int] = (8,)

  NAME = "ple"
  TINY = {"expert_dims": (8,), "tower_dims": (4,)}

  def check_options(self) -> None:
    super().check_options()
    check_dims(self, expert_dims=self.expert_dims, tower_dims=self.tower_dims)
    self.check_positive(num_levels=self.num_levels,
                        num_specific_experts=self.num_specific_experts,
                        num_shared_experts=self.num_shared_experts)

  @nn.compact
  def __call__(self, batch, train: bool = False) -> tuple[jax.Array, dict]:
    self.validate()
    mask = batch.get("mask")
    x = self.embed(batch)                                                  # [B, F]
    sizes = dict(num_domains=self.num_domains, num_tasks=self.num_tasks,
                 num_specific=self.num_specific_experts, num_shared=self.num_shared_experts,
                 expert_dims=tuple(self.expert_dims), use_running_average=not train)

    head_in, shared_in, gates = x, x, None
    for level in range(self.num_levels):
      last = level == self.num_levels - 1
      if level == 0:  # the first level's modules sit at the top (the reference's names)
        head_in, shared_in, gates = extraction_level(
            head_in, shared_in, mask, per_head_input=False, last=last, **sizes)
      else:
        head_in, shared_in, gates = _Level(**sizes, last=last, name=f"level{level}")(
            head_in, shared_in, mask)

    towers = head_bank(NormTower, self.num_domains, self.num_tasks, per_head_input=True)
    every = towers(tuple(self.tower_dims), "batch", not train, name="towers")(head_in, mask)
    logits = at_least_float32(own_domain(every, batch["domain"]))        # [B, T]
    return logits, {"gates": own_domain(gates, batch["domain"])}
