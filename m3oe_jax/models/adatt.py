"""AdaTT and AdaTT-sp (adaptive task-to-task fusion) (docs/models.md).

Every (domain, task) pair (d, t) is one of the G = D*T "tasks" of the fusion
network; each owns a module of `num_task_experts` (m) experts, and AdaTT adds one
shared module of `num_shared_experts` (s) experts. At each extraction level, head
g's gate is a softmax over *all* n = G*m (+ s) experts of the level, read from
g's own input; the head's native (own-module) experts are added on top, with
learned per-expert weights ("self_exp_res_connect").

Layout. Per-head weights are stacked [D, T, ...]. Where one flat order over
heads is needed (the experts of a level, hence the entries of every gate), head
(d, t) is flat index i = t*D + d; its m experts are entries i*m .. i*m + m - 1,
and the s shared experts come last.

Parameter tree (flattened with '/'):
  embedding/<feature>                        [vocab, e]
  experts/layer<l>/{kernel, bias}            [n, in, w], [n, w]     (more widths: kernel_1, bias_1, ...)
  gates/layer<l>/{kernel, bias}              [D, T, in, n], [D, T, n]
  self_weights/layer<l>                      [D, T, m]              (learned native weights, see below)
  shared_gate/layer<l>/{kernel, bias}        [in, n], [n]           (AdaTT, every level but the last)
  shared_self_weights/layer<l>               [s]                    (AdaTT, every level but the last)
  towers/hidden/{kernel, bias}               [D, T, w, 8], [D, T, 8]  (more widths: kernel_1, ...)
  towers/out/{kernel, bias}                  [D, T, 8, 1], [D, T, 1]
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from m3oe_jax.errors import ConfigError
from m3oe_jax.models.base import RankingModel
from m3oe_jax.models.layers import (Dense, at_least_float32, bank, like, select_domain, softmax32,
                                    torch_linear_bias_init, torch_linear_kernel_init)


def symmetric_uniform(bound: float):
  """U(-bound, bound), the native weights' initialisation."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class ReluStack(nn.Module):
  """Linear + ReLU layers of the given widths, no normalisation. Parameters
  kernel, bias for the first layer, then kernel_1, bias_1, ..."""
  widths: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for k, width in enumerate(self.widths):
      suffix = "" if k == 0 else f"_{k}"
      fan_in = x.shape[-1]
      kernel = self.param("kernel" + suffix, torch_linear_kernel_init, (fan_in, width))
      bias = self.param("bias" + suffix, torch_linear_bias_init(fan_in), (width,))
      x = jax.nn.relu(x @ like(kernel, x) + like(bias, x))
    return x


class ReluTower(nn.Module):
  """`hidden`: Linear + ReLU over `widths` (absent if empty); `out`: Linear -> 1.
  Returns the logit [..., B]."""
  widths: Sequence[int]

  @nn.compact
  def __call__(self, f: jax.Array) -> jax.Array:
    if self.widths:
      f = ReluStack(tuple(self.widths), name="hidden")(f)
    return Dense(1, name="out")(f)[..., 0]


class ExpertLevels(nn.Module):
  """The expert bank of each level, `layer<l>`: `size` ReluStacks.

  Level 0 reads one shared input [B, F]; later levels read one input per
  expert, [size, B, in]. Returns [size, B, w].
  """
  size: int
  widths: Sequence[int]

  @nn.compact
  def __call__(self, level: int, inputs: jax.Array) -> jax.Array:
    in_axes = None if level == 0 else 0
    experts = bank(ReluStack, self.size, in_axes=in_axes)(tuple(self.widths),
                                                          name=f"layer{level}")
    return experts(inputs)


class HeadGateLevels(nn.Module):
  """The per-head gates of each level, `layer<l>`, stacked [D, T]: softmax over
  the `size` experts of the level. Level 0 reads the shared input [B, F]; later
  levels read each head's own input [D, T, B, in]. Returns [D, T, B, size], float32."""
  num_domains: int
  num_tasks: int
  size: int

  @nn.compact
  def __call__(self, level: int, inputs: jax.Array) -> jax.Array:
    in_axes = None if level == 0 else 0
    gates = bank(bank(Dense, self.num_tasks, in_axes=in_axes), self.num_domains,
                 in_axes=in_axes)(self.size, name=f"layer{level}")
    return softmax32(gates(inputs))


class SharedGateLevels(nn.Module):
  """The shared module's gate of each non-last level, `layer<l>`: [B, size], float32."""
  size: int

  @nn.compact
  def __call__(self, level: int, inputs: jax.Array) -> jax.Array:
    return softmax32(Dense(self.size, name=f"layer{level}")(inputs))


class NativeWeightLevels(nn.Module):
  """Learned native-expert weights of each level, parameter `layer<l>` of
  `shape`, initialised U(+-sqrt(1 / experts_per_module))."""
  shape: Sequence[int]
  experts_per_module: int

  @nn.compact
  def __call__(self, level: int) -> jax.Array:
    bound = math.sqrt(1.0 / self.experts_per_module)
    return self.param(f"layer{level}", symmetric_uniform(bound), tuple(self.shape))


def own_expert_slots(num_domains: int, num_tasks: int, m: int, n: int) -> np.ndarray:
  """[D, T, m, n] 0/1: slot j of head (d, t) is flat expert (t*D + d)*m + j."""
  slots = np.zeros((num_domains, num_tasks, m, n), np.float32)
  for d in range(num_domains):
    for t in range(num_tasks):
      i = t * num_domains + d
      slots[d, t, np.arange(m), i * m + np.arange(m)] = 1.0
  return slots


class AdaTTBase(RankingModel):
  """AdaTT's extraction network with `shared_experts()` shared experts (0: AdaTT-sp).

  Options: `num_levels` extraction levels; `expert_dims`, the Linear+ReLU widths
  of every expert at every level; `num_task_experts` (m) per head;
  `self_exp_res_connect`, whether each head adds its own experts on top of its
  gate (with learned weights when some module has more than one expert, else
  with weight 1); `tower_dims`, the hidden widths of each head's tower.
  Diagnostics: `gates` [B, T, n], each row's own-domain softmax gates of the
  last level (before the native weights are added).
  """
  num_levels: int = 1
  expert_dims: Sequence[int] = (16,)
  num_task_experts: int = 2
  self_exp_res_connect: bool = True
  tower_dims: Sequence[int] = (8,)

  TINY = {"expert_dims": (4,), "tower_dims": (4,)}

  def shared_experts(self) -> int:
    return 0

  def check_options(self) -> None:
    super().check_options()
    self.check_positive(num_levels=self.num_levels, num_task_experts=self.num_task_experts)
    if len(self.expert_dims) == 0:
      raise ConfigError(f"config.model.{self.NAME}.expert_dims=() needs at least one width")
    self.check_positive(expert_dims=tuple(self.expert_dims))
    if self.tower_dims:
      self.check_positive(tower_dims=tuple(self.tower_dims))

  @nn.compact
  def __call__(self, batch, train: bool = False) -> tuple[jax.Array, dict]:
    del train  # no normalisation or dropout
    self.validate()
    num_d, num_t, m, s = self.num_domains, self.num_tasks, self.num_task_experts, \
        self.shared_experts()
    num_heads = num_d * num_t
    n = num_heads * m + s
    domain = batch["domain"]
    x = self.embed(batch)                                               # [B, F]

    residual = self.self_exp_res_connect
    # As in the reference: learned native weights as soon as one module has more
    # than one expert; otherwise each head adds its single expert with weight 1.
    learned = residual and (m != 1 or (s > 0 and s != 1))
    slots = jnp.asarray(own_expert_slots(num_d, num_t, m, n))           # [D, T, m, n]

    experts = ExpertLevels(n, tuple(self.expert_dims), name="experts")
    gates = HeadGateLevels(num_d, num_t, n, name="gates")
    if learned:
      self_weights = NativeWeightLevels((num_d, num_t, m), m, name="self_weights")
    if s and self.num_levels > 1:
      shared_gate = SharedGateLevels(n, name="shared_gate")
      if learned:
        shared_self_weights = NativeWeightLevels((s,), s, name="shared_self_weights")

    task_in, shared_in = x, x   # level 0: every module reads x
    for level in range(self.num_levels):
      last = level == self.num_levels - 1
      if level == 0:
        bank_in = x
      else:
        width = task_in.shape[-1]
        batch_size = task_in.shape[2]
        per_head = jnp.swapaxes(task_in, 0, 1).reshape(num_heads, batch_size, width)  # t-major
        per_expert = jnp.broadcast_to(per_head[:, None], (num_heads, m, batch_size, width))
        bank_in = per_expert.reshape(num_heads * m, batch_size, width)
        if s:
          shared = jnp.broadcast_to(shared_in[None], (s, batch_size, width))
          bank_in = jnp.concatenate([bank_in, shared], axis=0)
      expert_out = experts(level, bank_in)                              # [n, B, w]
      gate = gates(level, task_in)                                      # [D, T, B, n]
      mix = gate
      if residual:
        beta = self_weights(level) if learned else jnp.ones((num_d, num_t, m), jnp.float32)
        native = jnp.einsum("dtj,dtjn->dtn", beta, slots)               # [D, T, n]
        mix = gate + native[:, :, None, :]
      fused = jnp.einsum("dtbn,nbw->dtbw", like(mix, expert_out), expert_out)  # [D, T, B, w]

      if s and not last:
        shared_mix = shared_gate(level, shared_in)                      # [B, n]
        if residual:
          beta_s = shared_self_weights(level) if learned else jnp.ones((s,), jnp.float32)
          shared_mix = shared_mix + jnp.pad(beta_s, (n - s, 0))[None]
        shared_in = jnp.einsum("bn,nbw->bw", like(shared_mix, expert_out), expert_out)
      task_in = fused

    towers = bank(bank(ReluTower, num_t, in_axes=0), num_d, in_axes=0)(
        tuple(self.tower_dims), name="towers")
    every_head = towers(task_in)                                        # [D, T, B]
    logits = select_domain(jnp.transpose(every_head, (2, 0, 1)), domain, axis=1)
    logits = at_least_float32(logits)
    own_gates = select_domain(jnp.moveaxis(gate, 2, 0), domain, axis=1)  # [B, T, n]
    return logits, {"gates": own_gates}


class AdaTT(AdaTTBase):
  """AdaTT with task modules and one shared module of `num_shared_experts`."""
  num_shared_experts: int = 1

  NAME = "adatt"

  def shared_experts(self) -> int:
    return self.num_shared_experts

  def check_options(self) -> None:
    super().check_options()
    self.check_positive(num_shared_experts=self.num_shared_experts)


class AdaTTSp(AdaTTBase):
  """AdaTT-sp: task modules only, no shared module."""

  NAME = "adatt_sp"
