"""MLP baseline (the authors' `Mlp_7_Layer`): one independent network per head.

The authors' Mlp_7_Layer (docs/models.md). Every head (d, t) is its own
network on the shared input x [B, F]:

    h = Block(... Block(x))            F -> fcn_dims[0] -> ... -> fcn_dims[-1]
    l = Tower(h) = relu(LN(h @ Wh + bh)) @ Wo + bo      h -> h -> 1

Block is relu(LayerNorm(x @ W + b)). Every network runs on every row and each
row takes the logits of its own domain's heads. With one domain and one task
(how Table 2 trains it) this is a single plain network.

Parameter tree (flattened with '/'):
  embedding/<feature>                               [vocab, e]
  nets/layer<k>/{kernel, bias, ln_scale, ln_bias}   [D, T, in, out], [D, T, out] x3
  heads/hidden/{kernel, bias, ln_scale, ln_bias}    [D, T, h, h], [D, T, h] x3
  heads/out/{kernel, bias}                          [D, T, h, 1], [D, T, 1]
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from m3oe_jax.errors import ConfigError
from m3oe_jax.models.base import RankingModel
from m3oe_jax.models.layers import MLP, Tower, at_least_float32, bank, select_domain


def reference_head_table(num_domains: int, num_tasks: int) -> np.ndarray:
  """[D, T] flat head index (i = t*D + d) that the reference's `Mlp_7_Layer`
  actually uses for a row of domain r, task t.

  The reference indexes its networks and its domain masks with d + T*t instead of
  d + D*t, and never resets the selection between tasks. For each (r, t) the last
  write wins, which is the flat slot k = T*t + ((r - T*t) mod D) of its output
  list, computed by network r + T*(k // D). Only valid for T <= D (the reference
  crashes otherwise); with D == T it equals the intended t*D + r.
  """
  d, t = num_domains, num_tasks
  table = np.zeros((d, t), np.int64)
  for r in range(d):
    for task in range(t):
      k = t * task + (r - t * task) % d
      table[r, task] = r + t * (k // d)
  return table


class MLPBaseline(RankingModel):
  """One BlockLN network and tower per (domain, task) head, stacked [D, T, ...].

  Options:
    fcn_dims: widths of the network's BlockLN layers; the tower's hidden layer
      keeps the last width (reference: [512, 256, 256, 64]).
    reference_index_bug: select heads with the authors' faulty index (see
      `reference_head_table`), for parity tests only. It changes predictions
      only when D > T > 1 and is refused when T > D (the reference crashes).
  """
  fcn_dims: Sequence[int] = (512, 256, 256, 64)
  reference_index_bug: bool = False

  NAME = "mlp"
  TINY = {"fcn_dims": (32, 16, 16, 8)}

  def check_options(self) -> None:
    super().check_options()
    if len(self.fcn_dims) < 1:
      raise ConfigError(f"config.model.{self.NAME}.fcn_dims={tuple(self.fcn_dims)} "
                        "needs at least one width")
    self.check_positive(fcn_dims=tuple(self.fcn_dims))

  def check_data(self) -> None:
    super().check_data()
    if self.reference_index_bug and self.num_tasks > self.num_domains:
      raise ConfigError(
          f"config.model.{self.NAME}.reference_index_bug=True needs at most as many tasks "
          f"as domains (got {self.num_tasks} tasks, {self.num_domains} domains): the "
          "reference crashes otherwise")

  @nn.compact
  def __call__(self, batch, train: bool = False) -> tuple[jax.Array, dict]:
    del train  # no BatchNorm or dropout
    self.validate()
    d, t = self.num_domains, self.num_tasks
    domain = batch["domain"]
    x = self.embed(batch)                                                  # [B, F]
    nets = bank(bank(MLP, t), d)(tuple(self.fcn_dims), name="nets")
    heads = bank(bank(Tower, t, in_axes=0), d, in_axes=0)(name="heads")
    every_head = jnp.transpose(heads(nets(x)), (2, 0, 1))                  # [B, D, T]
    every_head = at_least_float32(every_head)
    if not self.reference_index_bug:
      return select_domain(every_head, domain, axis=1), {}
    # The authors' indexing: row b, task t reads flat head table[domain[b], t].
    flat = jnp.swapaxes(every_head, 1, 2).reshape(every_head.shape[0], d * t)  # [B, t*D + d]
    used = jnp.asarray(reference_head_table(d, t))                          # [D, T]
    row_used = select_domain(jnp.broadcast_to(used, (len(domain), d, t)), domain, axis=1)
    chosen = row_used[:, :, None] == jnp.arange(d * t)[None, None, :]       # [B, T, D*T]
    return jnp.sum(jnp.where(chosen, flat[:, None, :], 0.0), axis=-1), {}
