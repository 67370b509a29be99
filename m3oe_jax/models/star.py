"""STAR baseline, in two variants (docs/models.md).

variant="simplified" (default): the authors' `STAR`, which produced Table 2.
The M3oE star layer, a skip branch, an MLP and one head shared by all domains:

    s = x @ (W_shared ⊙ W_dom[d]) + b_shared + b_dom[d]     F -> h1, each row its own domain d
    h = Block(s) + Block_skip(x)                            h1 -> h2 and F -> h2
    h = Block(... Block(h))                                 h2 -> fcn_dims[3] -> ...
    l = relu(LN(h @ Wh + bh)) @ Wo + bo                      one head (per task)

  Parameters: star/{shared_kernel, shared_bias, domain_kernel, domain_bias},
  star_mlp/*, skip/*, main_mlp/layer<k>/*, head/{hidden, out}/*. With T > 1
  tasks (the authors' class is single-task) everything below the head is shared
  and there is one head per task, its weights stacked on a leading [T] axis.

variant="original": closer to STAR as published (Sheng et al., CIKM'21) and to
the port in Xiaopengli1/Scenario-Wise-Rec. Every domain has its own path, every
path runs on every row, and each row keeps its own domain's logit:

    z_d = (γ ⊙ γ_d) ⊙ (x - μ) / sqrt(σ² + ε) + β + β_d       partitioned normalisation
    h_d = relu(BN_d(h_d @ (W_k ⊙ W_{k,d}) + b_k + b_{k,d}))  each hidden layer k (star topology)
    s_d = h_d @ (W_o ⊙ W_{o,d}) + b_o + b_{o,d}              the output layer, one unit per task
    l   = s_{d(b)} + aux(x)                                  aux = BlockBN layers, then a linear layer

  μ, σ² (and every BN_d's statistics) come from the batch in training and from
  running averages in evaluation; `norm_stats` says which rows enter them.
  Parameters: partition_norm/{shared_scale, shared_bias, domain_scale,
  domain_bias}, fcn/layer<k>/{shared_kernel, shared_bias, domain_kernel,
  domain_bias, bn_scale, bn_bias}, fcn/out/{shared_*, domain_*},
  aux/layer<k>/{kernel, bias, bn_scale, bn_bias}, aux/out/{kernel, bias};
  batch_stats bn_mean/bn_var under partition_norm and fcn/layer<k>, aux/layer<k>.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from m3oe_jax.errors import ConfigError
from m3oe_jax.models.base import RankingModel
from m3oe_jax.models.layers import (Block, BlockBN, Dense, MLP, Star, Tower, at_least_float32, bank,
                                    like, normalise, select_domain)

VARIANTS = ("simplified", "original")
NORM_STATS = ("batch", "domain")
AUX_INPUTS = ("all", "domain")
DOMAIN_FEATURE = "domain"

# Kaiming-uniform (gain sqrt(2)) over the true input width, for [in, out] and
# stacked [D, in, out] kernels.
kaiming_uniform = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")
kaiming_uniform_stacked = nn.initializers.variance_scaling(2.0, "fan_in", "uniform",
                                                           batch_axis=(0,))


def unit_uniform(key, shape, dtype=jnp.float32):
  return jax.random.uniform(key, shape, dtype, 0.0, 1.0)


class PartitionNorm(nn.Module):
  """x [B, F] -> [D, B, F]: normalised, then scaled by γ ⊙ γ_d and shifted by β + β_d.

  With `per_domain_stats` each domain's rows are normalised by that domain's own
  statistics (running statistics [D, F]); otherwise by the whole batch's ([F]).
  """
  num_domains: int
  per_domain_stats: bool
  use_running_average: bool

  @nn.compact
  def __call__(self, x: jax.Array, weight: jax.Array) -> jax.Array:
    f, d = x.shape[-1], self.num_domains
    shared_scale = self.param("shared_scale", nn.initializers.ones, (f,))
    shared_bias = self.param("shared_bias", nn.initializers.zeros, (f,))
    domain_scale = self.param("domain_scale", nn.initializers.ones, (d, f))
    domain_bias = self.param("domain_bias", nn.initializers.zeros, (d, f))
    if self.per_domain_stats:
      z = normalise(self, jnp.broadcast_to(x, (d,) + x.shape), weight,
                    self.use_running_average)                                  # [D, B, F]
    else:
      z = normalise(self, x, weight[0], self.use_running_average)[None]       # [1, B, F]
    scale = like((shared_scale[None] * domain_scale)[:, None, :], z)
    return z * scale + like((shared_bias[None] + domain_bias)[:, None, :], z)


class StarDense(nn.Module):
  """Every domain path's layer at once: h [D, B, in] -> [D, B, out] with kernel
  W ⊙ W_d and bias b + b_d, then (`batch_norm`) relu(BN_d(.)) with per-domain
  statistics over the rows `weight` [D, B] selects."""
  features: int
  batch_norm: bool
  use_running_average: bool

  @nn.compact
  def __call__(self, h: jax.Array, weight: jax.Array) -> jax.Array:
    d, fan_in, out = h.shape[0], h.shape[-1], self.features
    shared_kernel = self.param("shared_kernel", kaiming_uniform, (fan_in, out))
    shared_bias = self.param("shared_bias", unit_uniform, (out,))
    domain_kernel = self.param("domain_kernel", kaiming_uniform_stacked, (d, fan_in, out))
    domain_bias = self.param("domain_bias", unit_uniform, (d, out))
    y = jnp.einsum("dbi,dio->dbo", h, like(shared_kernel[None] * domain_kernel, h))
    y = y + like((shared_bias[None] + domain_bias)[:, None, :], h)
    if not self.batch_norm:
      return y
    bn_scale = self.param("bn_scale", nn.initializers.ones, (d, out))
    bn_bias = self.param("bn_bias", nn.initializers.zeros, (d, out))
    y = normalise(self, y, weight, self.use_running_average)
    return jax.nn.relu(y * like(bn_scale[:, None, :], y) + like(bn_bias[:, None, :], y))


class StarFCN(nn.Module):
  """The star FCN: hidden StarDense layers `layer<k>` with BN_d + ReLU, then the
  linear StarDense `out` with one unit per task. [D, B, in] -> [D, B, T]."""
  widths: Sequence[int]
  num_tasks: int
  use_running_average: bool

  @nn.compact
  def __call__(self, h: jax.Array, weight: jax.Array) -> jax.Array:
    for k, width in enumerate(self.widths):
      h = StarDense(width, True, self.use_running_average, name=f"layer{k}")(h, weight)
    return StarDense(self.num_tasks, False, self.use_running_average, name="out")(h, weight)


class AuxNet(nn.Module):
  """The auxiliary network: BlockBN layers `layer<k>`, then Dense `out` to one
  logit per task. [B, in] -> [B, T]."""
  widths: Sequence[int]
  num_tasks: int
  use_running_average: bool

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    for k, width in enumerate(self.widths):
      x = BlockBN(width, self.use_running_average, name=f"layer{k}")(x, mask)
    return Dense(self.num_tasks, name="out")(x)


class STAR(RankingModel):
  """STAR: star-topology (shared ⊙ domain) weights; see the module docstring.

  Options:
    variant: "simplified" (the authors' STAR, Table 2; default) or "original".
    fcn_dims: [h1, h2, main widths...], h2 == fcn_dims[2]; simplified only
      (reference [512, 256, 256, 64]).
    original_fcn_dims: hidden widths of the star FCN; original only
      (Scenario-Wise-Rec: [128, 64, 32]).
    aux_dims: hidden widths (BatchNorm + ReLU) of the auxiliary network; original
      only (Scenario-Wise-Rec: [32]).
    norm_stats: original only. "batch": the statistics of the partitioned
      normalisation and of every path's BatchNorm come from all rows of the
      batch (as Scenario-Wise-Rec); "domain": only from the rows of that path's
      domain (the paper's partitioned normalisation).
    aux_input: original only. "all": the auxiliary network reads the whole input
      x, which holds the domain-indicator embedding (as Scenario-Wise-Rec);
      "domain": only the embedding of the sparse feature named "domain".
  """
  variant: str = "simplified"
  fcn_dims: Sequence[int] = (512, 256, 256, 64)
  original_fcn_dims: Sequence[int] = (128, 64, 32)
  aux_dims: Sequence[int] = (32,)
  norm_stats: str = "batch"
  aux_input: str = "all"

  NAME = "star"
  TINY = {"fcn_dims": (16, 8, 8, 8), "original_fcn_dims": (16, 8), "aux_dims": (8,)}

  def check_options(self) -> None:
    super().check_options()
    name = f"config.model.{self.NAME}"
    for field, allowed in (("variant", VARIANTS), ("norm_stats", NORM_STATS),
                           ("aux_input", AUX_INPUTS)):
      if getattr(self, field) not in allowed:
        raise ConfigError(f"{name}.{field}={getattr(self, field)!r}; expected one of {allowed}")
    dims = tuple(self.fcn_dims)
    if len(dims) < 3:
      raise ConfigError(f"{name}.fcn_dims={dims} needs at least 3 entries: [h1, h2, main "
                        "widths...] (reference: [512, 256, 256, 64])")
    self.check_positive(fcn_dims=dims)
    if dims[2] != dims[1]:
      raise ConfigError(f"{name}.fcn_dims={dims}: the main MLP's input fcn_dims[2]={dims[2]} "
                        f"must equal the star output fcn_dims[1]={dims[1]}")
    if len(self.original_fcn_dims) < 1:
      raise ConfigError(f"{name}.original_fcn_dims={tuple(self.original_fcn_dims)} needs "
                        "at least one width")
    self.check_positive(original_fcn_dims=tuple(self.original_fcn_dims))
    if len(self.aux_dims):
      self.check_positive(aux_dims=tuple(self.aux_dims))

  def check_data(self) -> None:
    super().check_data()
    if (self.variant == "original" and self.aux_input == "domain"
        and DOMAIN_FEATURE not in self.feature_names):
      raise ConfigError(f"config.model.{self.NAME}.aux_input='domain' needs a sparse feature "
                        f"named {DOMAIN_FEATURE!r}; the features are {tuple(self.feature_names)}")

  @nn.compact
  def __call__(self, batch, train: bool = False) -> tuple[jax.Array, dict]:
    self.validate()
    x = self.embed(batch)                                                  # [B, F]
    if self.variant == "simplified":
      return at_least_float32(self.simplified(x, batch["domain"])), {}
    return at_least_float32(self.original(x, batch, train)), {}

  def simplified(self, x: jax.Array, domain: jax.Array) -> jax.Array:
    h1, h2 = self.fcn_dims[0], self.fcn_dims[1]
    s = Star(self.num_domains, h1, name="star")(x, domain)                  # [B, h1]
    h = Block(h2, name="star_mlp")(s) + Block(h2, name="skip")(x)           # [B, h2]
    h = MLP(tuple(self.fcn_dims[3:]), name="main_mlp")(h)
    if self.num_tasks == 1:
      return Tower(name="head")(h)[:, None]                                 # [B, 1]
    return bank(Tower, self.num_tasks)(name="head")(h).T                    # [B, T]

  def original(self, x: jax.Array, batch, train: bool) -> jax.Array:
    d, domain = self.num_domains, batch["domain"]
    mask = batch.get("mask")
    rows = jnp.ones(x.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
    if self.norm_stats == "domain":
      own = (domain[None, :] == jnp.arange(d)[:, None]).astype(jnp.float32)  # [D, B]
      weight = own * rows[None]
    else:
      weight = jnp.broadcast_to(rows, (d,) + rows.shape)
    h = PartitionNorm(d, self.norm_stats == "domain", not train,
                      name="partition_norm")(x, weight)                     # [D, B, F]
    main = StarFCN(tuple(self.original_fcn_dims), self.num_tasks, not train,
                   name="fcn")(h, weight)                                   # [D, B, T]
    main = select_domain(jnp.swapaxes(main, 0, 1), domain, axis=1)          # [B, T]
    aux_in = x
    if self.aux_input == "domain":
      k = list(self.feature_names).index(DOMAIN_FEATURE)
      aux_in = x[:, k * self.embed_dim:(k + 1) * self.embed_dim]
    aux = AuxNet(tuple(self.aux_dims), self.num_tasks, not train, name="aux")(aux_in, mask)
    return main + aux
