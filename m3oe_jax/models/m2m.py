"""M2M (multi-scenario multi-task meta learning) (docs/models.md).

No author code exists; this is one reading of the paper: K experts
over the input, a scenario vector from the domain's embedding, learned task
embeddings, a meta attention over the experts and a residual meta tower whose
weights are *generated* from the scenario vector, then one output MLP per task.
There are T heads (not D*T): the domain enters through the scenario vector.
Everything is per example; nothing mixes the rows of a batch except the
BatchNorm statistics in train mode. Every BatchNorm follows torch's BatchNorm1d
after a Linear, with the Linear's bias kept out of the batch statistics (see
`linear_batch_norm`): same values, an exactly zero train-mode bias gradient.

Parameter tree (flattened with '/'; h = hidden, e = embed width, K experts):
  embedding/<feature>                                  [vocab, e]
  backbone/layer<k>/{query,key,value,attention_out,ff1,ff2}/{kernel,bias}
  backbone/layer<k>/{norm1,norm2}/{ln_scale,ln_bias}   (backbone "field_transformer" only)
  experts/{kernel, bias, bn_scale, bn_bias}            [K, F, h], [K, h] x3
  scenario/{kernel, bias, bn_scale, bn_bias}           [e, h], [h] x3
  task_emb                                             [T, e]
  task_view/{kernel, bias}                             [e, h], [h]
  meta_attention/gen_w/{kernel, bias}                  [h, 4h^2], [4h^2]  (+ bn_scale, bn_bias with "swr")
  meta_attention/gen_b/{kernel, bias}                  [h, 2h], [2h]      (+ bn_*, "swr")
  meta_attention/v                                     [2h]
  meta_tower/gen_w/{kernel, bias}                      [T, h, h^2], [T, h^2] (+ bn_*, "swr")
  meta_tower/gen_b/{kernel, bias}                      [T, h, h], [T, h]     (+ bn_*, "swr")
  out/layer<k>/{kernel, bias, bn_scale, bn_bias}       [T, in, w], [T, w] x3
  out/logit/{kernel, bias}                             [T, w, 1], [T, 1]
and batch_stats/<every BatchNorm above>/{bn_mean, bn_var}.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from m3oe_jax.errors import ConfigError
from m3oe_jax.models.base import RankingModel
from m3oe_jax.models.layers import (Dense, affine, at_least_float32, bank, layer_norm, like,
                                    linear_batch_norm, softmax32)

NEGATIVE_SLOPE = 0.1
BACKBONES = ("none", "field_transformer")
META_WEIGHTS = ("linear", "swr")


def leaky(y: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(y, NEGATIVE_SLOPE)


class BlockBNAct(nn.Module):
  """act(BatchNorm(x @ kernel + bias)) with act leaky_relu_0.1, or relu if `relu`;
  parameters kernel, bias, bn_scale, bn_bias."""
  features: int
  use_running_average: bool
  relu: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    y = linear_batch_norm(self, x, self.features, mask, self.use_running_average)
    return jax.nn.relu(y) if self.relu else leaky(y)


class Generator(nn.Module):
  """Generates weights from the scenario vector: s @ kernel + bias ("linear"),
  or leaky_relu_0.1(BatchNorm(s @ kernel + bias)) ("swr")."""
  features: int
  swr: bool
  use_running_average: bool

  @nn.compact
  def __call__(self, s: jax.Array, mask: jax.Array | None) -> jax.Array:
    if self.swr:
      return leaky(linear_batch_norm(self, s, self.features, mask, self.use_running_average))
    return affine(self, s, self.features)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, eps 1e-5; parameters ln_scale, ln_bias."""

  @nn.compact
  def __call__(self, y: jax.Array) -> jax.Array:
    width = y.shape[-1]
    scale = self.param("ln_scale", nn.initializers.ones, (width,))
    bias = self.param("ln_bias", nn.initializers.zeros, (width,))
    return layer_norm(y, scale, bias)


class TorchLinear(nn.Module):
  """x @ kernel + bias with explicit kernel bound and zero bias (torch's attention
  projections): kernel ~ U(+-bound)."""
  features: int
  bound: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bound = self.bound

    def uniform(key, shape, dtype=jnp.float32):
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    kernel = self.param("kernel", uniform, (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return x @ like(kernel, x) + like(bias, x)


class EncoderLayer(nn.Module):
  """torch.nn.TransformerEncoderLayer (post-norm, ReLU feed-forward, no dropout)
  over the fields of each example: x [B, S, e] -> [B, S, e]."""
  num_heads: int
  ff_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, s, e = x.shape
    dh = e // self.num_heads
    # torch: in_proj_weight [3e, e] is Xavier-uniform as one matrix, biases zero;
    # out_proj's weight has the Linear default U(+-1/sqrt(e)) and a zero bias.
    in_bound = math.sqrt(6.0 / (e + 3 * e))
    q, k, v = (TorchLinear(e, in_bound, name=n)(x).reshape(b, s, self.num_heads, dh)
               for n in ("query", "key", "value"))
    scores = jnp.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(dh)       # within each example
    attended = jnp.einsum("bhij,bjhd->bihd", like(softmax32(scores), v), v)
    attended = TorchLinear(e, 1.0 / math.sqrt(e), name="attention_out")(attended.reshape(b, s, e))
    x = LayerNorm(name="norm1")(x + attended)
    ff = Dense(e, name="ff2")(jax.nn.relu(Dense(self.ff_dim, name="ff1")(x)))
    return LayerNorm(name="norm2")(x + ff)


class FieldTransformer(nn.Module):
  """A stack of encoder layers `layer<k>` over each example's S field embeddings."""
  num_layers: int
  num_heads: int
  ff_dim: int

  @nn.compact
  def __call__(self, fields: jax.Array) -> jax.Array:
    for k in range(self.num_layers):
      fields = EncoderLayer(self.num_heads, self.ff_dim, name=f"layer{k}")(fields)
    return fields


class MetaAttention(nn.Module):
  """Weights the experts per task with an attention whose parameters are
  generated from the scenario vector.

  experts [K, B, h], task_view [T, h], scenario [B, h] ->
  (attention [B, T, K], R [T, B, h]).
  """
  swr: bool
  use_running_average: bool

  @nn.compact
  def __call__(self, experts, task_view, scenario, mask):
    h = experts.shape[-1]
    batch_size = scenario.shape[0]
    gen_w = Generator(4 * h * h, self.swr, self.use_running_average, name="gen_w")
    gen_b = Generator(2 * h, self.swr, self.use_running_average, name="gen_b")
    v = self.param("v", nn.initializers.ones, (2 * h,))
    weight = gen_w(scenario, mask).reshape(batch_size, 2 * h, 2 * h)   # [B, in, out]
    bias = gen_b(scenario, mask)                                        # [B, 2h]
    # z_{t,k} = concat(E_k, q_t): its product with the weight splits into the
    # expert part and the task part, so the [B, T, K, 2h] concat is never built.
    from_experts = jnp.einsum("kbi,bio->bko", experts, weight[:, :h])   # [B, K, 2h]
    from_tasks = jnp.einsum("ti,bio->bto", task_view, weight[:, h:])    # [B, T, 2h]
    hidden = leaky(from_experts[:, None] + from_tasks[:, :, None] + bias[:, None, None])
    attention = softmax32(hidden @ like(v, hidden))                     # [B, T, K] float32
    return attention, jnp.einsum("btk,kbh->tbh", like(attention, experts), experts)


class MetaTower(nn.Module):
  """One task's residual meta layer: leaky(R @ N(s) + n(s) + R), with N, n
  generated from the scenario vector. R [B, h], scenario [B, h] -> [B, h]."""
  swr: bool
  use_running_average: bool

  @nn.compact
  def __call__(self, r, scenario, mask):
    h = r.shape[-1]
    weight = Generator(h * h, self.swr, self.use_running_average, name="gen_w")(
        scenario, mask).reshape(-1, h, h)
    bias = Generator(h, self.swr, self.use_running_average, name="gen_b")(scenario, mask)
    return leaky(jnp.einsum("bi,bio->bo", r, weight) + bias + r)


class TaskOutput(nn.Module):
  """BlockBN (relu) layers `layer<k>` over `widths`, then `logit`: Linear -> 1."""
  widths: Sequence[int]
  use_running_average: bool

  @nn.compact
  def __call__(self, o, mask):
    for k, width in enumerate(self.widths):
      o = BlockBNAct(width, self.use_running_average, relu=True, name=f"layer{k}")(o, mask)
    return Dense(1, name="logit")(o)[..., 0]


class M2M(RankingModel):
  """M2M for multi-domain multi-task ranking (docs/models.md).

  Options: `num_experts` (K), `hidden` (h, the expert/scenario/task width),
  `backbone` ("none": the experts read x; "field_transformer": a per-example
  transformer encoder over the S field embeddings first, with
  `transformer_layers`, `transformer_heads`, `transformer_ff`), `meta_weights`
  ("linear": generated weights are linear in the scenario vector; "swr": they
  pass BatchNorm + leaky_relu as in the Scenario-Wise-Rec port), `out_dims`.
  Diagnostics: `expert_attention` [B, T, K].
  """
  num_experts: int = 4
  hidden: int = 16
  backbone: str = "none"
  meta_weights: str = "linear"
  out_dims: Sequence[int] = (64, 32)
  transformer_layers: int = 2
  transformer_heads: int = 4
  transformer_ff: int = 16

  NAME = "m2m"
  TINY = {"num_experts": 2, "hidden": 4, "out_dims": (8, 4), "transformer_ff": 8}

  def check_options(self) -> None:
    super().check_options()
    if self.backbone not in BACKBONES:
      raise ConfigError(f"config.model.m2m.backbone={self.backbone!r} must be one of {BACKBONES}")
    if self.meta_weights not in META_WEIGHTS:
      raise ConfigError(f"config.model.m2m.meta_weights={self.meta_weights!r} must be one "
                        f"of {META_WEIGHTS}")
    self.check_positive(num_experts=self.num_experts, hidden=self.hidden,
                        transformer_layers=self.transformer_layers,
                        transformer_heads=self.transformer_heads,
                        transformer_ff=self.transformer_ff)
    if self.out_dims:
      self.check_positive(out_dims=tuple(self.out_dims))
    if self.backbone == "field_transformer" and self.embed_dim % self.transformer_heads:
      raise ConfigError(
          f"config.model.m2m.transformer_heads={self.transformer_heads} must divide the "
          f"embedding width config.model.embed_dim={self.embed_dim} (the transformer's d_model)")

  def check_data(self) -> None:
    super().check_data()
    if not self.feature_names:
      raise ConfigError("M2M needs the domain id as the last sparse feature; the schema has "
                        "no sparse features")

  @nn.compact
  def __call__(self, batch, train: bool = False) -> tuple[jax.Array, dict]:
    self.validate()
    frozen = not train
    mask = batch.get("mask")
    swr = self.meta_weights == "swr"
    e, h, num_t = self.embed_dim, self.hidden, self.num_tasks
    num_s = len(self.feature_names)

    x = self.embed(batch)                                               # [B, S*e + Q]
    batch_size = x.shape[0]
    # The domain id is the last sparse feature: reuse its looked-up row.
    domain_emb = x[:, (num_s - 1) * e:num_s * e]                        # [B, e]

    if self.backbone == "field_transformer":
      fields = x[:, :num_s * e].reshape(batch_size, num_s, e)
      fields = FieldTransformer(self.transformer_layers, self.transformer_heads,
                                self.transformer_ff, name="backbone")(fields)
      u = jnp.concatenate([fields.reshape(batch_size, num_s * e), x[:, num_s * e:]], axis=-1)
    else:
      u = x

    experts = bank(BlockBNAct, self.num_experts, in_axes=(None, None))(
        h, frozen, name="experts")(u, mask)                             # [K, B, h]
    scenario = BlockBNAct(h, frozen, name="scenario")(domain_emb, mask)  # [B, h]
    task_emb = self.param("task_emb", nn.initializers.normal(self.embed_init_std), (num_t, e))
    task_view = leaky(Dense(h, name="task_view")(like(task_emb, x)))    # [T, h]

    attention, r = MetaAttention(swr, frozen, name="meta_attention")(
        experts, task_view, scenario, mask)                             # [B, T, K], [T, B, h]
    o = bank(MetaTower, num_t, in_axes=(0, None, None))(
        swr, frozen, name="meta_tower")(r, scenario, mask)              # [T, B, h]
    logits = bank(TaskOutput, num_t, in_axes=(0, None))(
        tuple(self.out_dims), frozen, name="out")(o, mask)              # [T, B]
    return at_least_float32(logits.T), {"expert_attention": attention}
