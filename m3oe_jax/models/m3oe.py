"""M3oE, equation by equation as in ../shared/spec/m3oe_model.md.

Parameter tree (flattened with '/', these are the spec's section-7 names):
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

from m3oe_jax.models.layers import MLP, Block, Dense, bank

ARCH_NAMES = ("bal_d", "bal_t", "exp_d", "exp_t")


def validate_dims(fcn_dims: Sequence[int], embed_dim: int, num_shared_experts: int,
                  num_domains: int, num_tasks: int, embed_rows_multiple: int = 1) -> None:
  """Rejects configurations the reference would mis-handle or crash on."""
  dims = list(fcn_dims)
  if len(dims) < 4:
    raise ValueError(
        f"model.fcn_dims={dims} needs at least 4 entries: [h1, h2, expert dims...] "
        "(reference: [512, 256, 256, 64])")
  if any(int(d) != d or d < 1 for d in dims):
    raise ValueError(f"model.fcn_dims={dims} must be positive integers")
  if dims[2] != dims[1]:
    raise ValueError(
        f"model.fcn_dims={dims}: the expert MLP's input fcn_dims[2]={dims[2]} must "
        f"equal the star output fcn_dims[1]={dims[1]}")
  for name, value in (("model.embed_dim", embed_dim),
                      ("model.embed_rows_multiple", embed_rows_multiple),
                      ("model.num_shared_experts", num_shared_experts),
                      ("number of domains", num_domains), ("number of tasks", num_tasks)):
    if value < 1:
      raise ValueError(f"{name} must be >= 1, got {value}")


def padded_rows(vocab: int, multiple: int) -> int:
  """Rows of a table for `vocab` ids: `vocab` rounded up to a multiple of `multiple`."""
  return -(-vocab // multiple) * multiple


class Embeddings(nn.Module):
  """One table per sparse feature; concatenates the looked-up rows and dense values.

  A table has `padded_rows(vocab, rows_multiple)` rows so that it can be split
  evenly over a mesh axis. The rows past the vocabulary start at zero and are
  never looked up, so their gradient, Adam update and weight decay are all zero:
  they stay zero and change no result.
  """
  feature_names: Sequence[str]
  vocab_sizes: Sequence[int]
  embed_dim: int
  init_std: float
  rows_multiple: int = 1

  @nn.compact
  def __call__(self, sparse: jax.Array, dense: jax.Array) -> jax.Array:
    normal = nn.initializers.normal(self.init_std)
    columns = []
    for k, (name, vocab) in enumerate(zip(self.feature_names, self.vocab_sizes)):

      def init(key, shape, vocab=vocab):
        return jnp.pad(normal(key, (vocab, shape[1])), ((0, shape[0] - vocab), (0, 0)))

      rows = padded_rows(vocab, self.rows_multiple)
      table = self.param(name, init, (rows, self.embed_dim))
      ids = sparse[:, k] if rows == vocab else jnp.minimum(sparse[:, k], vocab - 1)
      columns.append(jnp.take(table, ids, axis=0, mode="clip"))
    return jnp.concatenate(columns + [dense.astype(jnp.float32)], axis=-1)


class Star(nn.Module):
  """Star topology: each example goes through (W_shared ⊙ W_dom[d]) of its domain."""
  num_domains: int
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, domain: jax.Array) -> jax.Array:
    f = x.shape[-1]
    xavier = nn.initializers.xavier_uniform()
    xavier_stacked = nn.initializers.xavier_uniform(batch_axis=(0,))
    shared_kernel = self.param("shared_kernel", xavier, (f, self.features))
    shared_bias = self.param("shared_bias", nn.initializers.zeros, (self.features,))
    domain_kernel = self.param("domain_kernel", xavier_stacked,
                               (self.num_domains, f, self.features))
    domain_bias = self.param("domain_bias", nn.initializers.zeros,
                             (self.num_domains, self.features))
    # Each example's input is placed in its domain's slot of a [B, D*F] matrix, so
    # one matmul against the stacked [D*F, h1] kernels applies every example's
    # own-domain kernel without computing (or selecting from) the other domains.
    own = jax.nn.one_hot(domain, self.num_domains, dtype=x.dtype)         # [B, D]
    slotted = (own[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)   # [B, D*F]
    kernels = (shared_kernel[None] * domain_kernel).reshape(-1, self.features)
    return slotted @ kernels + shared_bias + own @ domain_bias


class ArchWeights(nn.Module):
  """The four architecture logits (bal_d, bal_t, exp_d, exp_t)."""
  init_value: float

  @nn.compact
  def __call__(self) -> dict[str, jax.Array]:
    init = nn.initializers.constant(self.init_value)
    return {name: self.param(name, init, ()) for name in ARCH_NAMES}


class Tower(nn.Module):
  """Block o -> o, then Dense o -> 1; returns the logit [B]."""

  @nn.compact
  def __call__(self, f: jax.Array) -> jax.Array:
    width = f.shape[-1]
    y = Block(width, name="hidden")(f)
    return Dense(1, name="out")(y)[..., 0]


def select_domain(x: jax.Array, domain: jax.Array, axis: int) -> jax.Array:
  """Picks, for each example b, entry domain[b] of `x` along `axis` (batch is axis 0).

  A masked sum rather than a gather: its gradient is a dense select instead of a
  scatter, which XLA runs far faster on CPU and GPU.
  """
  shape = [1] * x.ndim
  shape[0], shape[axis] = x.shape[0], x.shape[axis]
  chosen = (domain[:, None] == jnp.arange(x.shape[axis])[None]).reshape(shape)
  return jnp.sum(jnp.where(chosen, x, 0), axis=axis)


def balance_weights(logit: jax.Array, n: int) -> jax.Array:
  """[n, n] weights: sigmoid(logit) on the diagonal, the rest shared equally."""
  if n == 1:
    return jnp.ones((1, 1), jnp.float32)
  a = jax.nn.sigmoid(logit)
  eye = jnp.eye(n, dtype=jnp.float32)
  return eye * a + (1.0 - eye) * (1.0 - a) / (n - 1)


class M3oE(nn.Module):
  """Multi-domain multi-task mixture of experts.

  Call with a batch dict (sparse [B,S], dense [B,Q], domain [B]); returns
  (logits [B, T] for each example's own domain, aux dict of diagnostics).
  """
  feature_names: Sequence[str]
  vocab_sizes: Sequence[int]
  num_domains: int
  num_tasks: int
  embed_dim: int = 16
  fcn_dims: Sequence[int] = (512, 256, 256, 64)
  num_shared_experts: int = 4
  arch_init: float = 1.0
  gate_stop_gradient: bool = True
  embed_init_std: float = 1e-4
  embed_rows_multiple: int = 1

  def setup(self):
    validate_dims(self.fcn_dims, self.embed_dim, self.num_shared_experts,
                  self.num_domains, self.num_tasks, self.embed_rows_multiple)
    h1, h2 = self.fcn_dims[0], self.fcn_dims[1]
    expert_widths = tuple(self.fcn_dims[3:])
    self.embedding = Embeddings(self.feature_names, self.vocab_sizes, self.embed_dim,
                                self.embed_init_std, self.embed_rows_multiple)
    self.star = Star(self.num_domains, h1)
    self.star_mlp = Block(h2)
    self.skip = Block(h2)
    self.shared_experts = bank(MLP, self.num_shared_experts)(expert_widths)
    self.domain_experts = bank(MLP, self.num_domains)(expert_widths)
    self.task_experts = bank(MLP, self.num_tasks)(expert_widths)
    self.gates = bank(bank(Dense, self.num_tasks), self.num_domains)(
        self.num_shared_experts)
    self.towers = bank(bank(Tower, self.num_tasks, in_axes=0), self.num_domains)()
    self.arch = ArchWeights(self.arch_init)

  def __call__(self, batch) -> tuple[jax.Array, dict]:
    domain = batch["domain"]
    x = self.embedding(batch["sparse"], batch["dense"])                 # [B, F]
    h = self.star_mlp(self.star(x, domain)) + self.skip(x)              # [B, h2]

    shared = self.shared_experts(h)                                     # [E, B, o]
    domain_out = self.domain_experts(h)                                 # [D, B, o]
    task_out = self.task_experts(h)                                     # [T, B, o]

    gate_input = jax.lax.stop_gradient(h) if self.gate_stop_gradient else h
    gate_logits = jnp.moveaxis(self.gates(gate_input), 2, 0)            # [B, D, T, E]
    gates = jax.nn.softmax(select_domain(gate_logits, domain, axis=1))  # [B, T, E]

    arch = self.arch()
    fusion = {name: jax.nn.sigmoid(logit) for name, logit in arch.items()}
    dom_mix = balance_weights(arch["bal_d"], self.num_domains)          # [D, D]
    task_mix = balance_weights(arch["bal_t"], self.num_tasks)           # [T, T]
    own_mix = jax.nn.one_hot(domain, self.num_domains) @ dom_mix         # [B, D]
    own_domain = jnp.einsum("bj,jbo->bo", own_mix, domain_out)          # [B, o]
    task_views = jnp.einsum("tj,jbo->tbo", task_mix, task_out)          # [T, B, o]
    fused = (jnp.einsum("bte,ebo->tbo", gates, shared)
             + fusion["exp_d"] * own_domain[None]
             + fusion["exp_t"] * task_views)                            # [T, B, o]

    every_tower = self.towers(fused)                                    # [D, T, B]
    logits = select_domain(jnp.transpose(every_tower, (2, 0, 1)), domain, axis=1)
    aux = {"gates": gates, "fusion_weights": fusion}
    return logits, aux
