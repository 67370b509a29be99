"""Building blocks shared by the models: dense and normalised layers, expert MLPs,
banks of stacked modules, the embedding lookup and per-domain selection.

Every layer computes in the dtype of its input: its float32 parameters are cast
to it (`like`), so a bfloat16 input gives bfloat16 matmuls and activations and
float32 gradients. Normalisation statistics and softmax gates are at least float32
(`at_least_float32`: float64 stays float64, for float64 models).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LAYER_NORM_EPSILON = 1e-5

# torch.nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
# for kernel and bias alike, as in the reference implementation.
torch_linear_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_linear_bias_init(fan_in: int):

  def init(key, shape, dtype=jnp.float32):
    bound = 1.0 / jnp.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def like(value: jax.Array, x: jax.Array) -> jax.Array:
  """`value` (a parameter, or a float32 weight) cast to the compute dtype of `x`."""
  return value.astype(x.dtype)


def at_least_float32(x: jax.Array) -> jax.Array:
  """`x` in float32, or in its own dtype when that is wider (float64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def softmax32(logits: jax.Array, axis: int = -1) -> jax.Array:
  """softmax in float32 (float64 for float64 logits) whatever the dtype of `logits`."""
  return jax.nn.softmax(at_least_float32(logits), axis=axis)


def layer_norm(y: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
  """LayerNorm over the last axis, computed in float32; returned in y's dtype."""
  y32 = at_least_float32(y)
  mean = jnp.mean(y32, axis=-1, keepdims=True)
  centred = y32 - mean
  var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
  return (centred * jax.lax.rsqrt(var + LAYER_NORM_EPSILON) * scale + bias).astype(y.dtype)


def affine(module: nn.Module, x: jax.Array, features: int) -> jax.Array:
  """x @ kernel + bias with `module`'s parameters `kernel` [in, features] and `bias`."""
  fan_in = x.shape[-1]
  kernel = module.param("kernel", torch_linear_kernel_init, (fan_in, features))
  bias = module.param("bias", torch_linear_bias_init(fan_in), (features,))
  return x @ like(kernel, x) + like(bias, x)


class Dense(nn.Module):
  """x @ kernel + bias, parameters named `kernel` and `bias`."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return affine(self, x, self.features)


class Block(nn.Module):
  """relu(LayerNorm(x @ kernel + bias)); parameters kernel, bias, ln_scale, ln_bias."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = affine(self, x, self.features)
    ln_scale = self.param("ln_scale", nn.initializers.ones, (self.features,))
    ln_bias = self.param("ln_bias", nn.initializers.zeros, (self.features,))
    return jax.nn.relu(layer_norm(y, ln_scale, ln_bias))


class MLP(nn.Module):
  """A stack of Blocks named layer0, layer1, ... with the given output widths."""
  widths: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for k, width in enumerate(self.widths):
      x = Block(width, name=f"layer{k}")(x)
    return x


BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.1  # torch's convention: new = (1 - m) * old + m * batch


def normalise(module: nn.Module, y: jax.Array, weight: jax.Array | None,
              use_running_average: bool, offset: jax.Array | None = None) -> jax.Array:
  """(y - mean) / sqrt(var + eps) over the rows of y [..., B, F], torch's
  BatchNorm without its affine part, with the statistics
  `batch_stats/{bn_mean, bn_var}` of `module` ([..., F], one set per leading index).

  Train mode uses the mean and biased variance of the rows weighted by `weight`
  [..., B] (0 for padded rows, or rows of other domains; None: all). Under jit over
  a mesh these sums span the *global* batch, every device and process. The running
  statistics move by torch's rule (momentum 0.1) with the *unbiased* batch
  variance, and stay put where no row counted. Eval mode uses them.

  `offset` [F] is a constant the input is known to carry on top of y (a Linear's
  bias before the BatchNorm): it enters the running mean, and eval mode normalises
  y + offset, as torch does, but the batch statistics are taken over y alone. In
  train mode the batch mean removes such a bias, so its gradient is exactly zero;
  normalising y + offset instead would hand the bias rounding noise, which Adam
  turns into steps the size of the learning rate, different on every device layout.

  The statistics and the normalisation are computed in float32; the result has
  y's dtype.
  """
  out_dtype = y.dtype
  y = at_least_float32(y)
  features = y.shape[-1]
  shape = y.shape[:-2] + (features,)
  running_mean = module.variable("batch_stats", "bn_mean", jnp.zeros, shape, jnp.float32)
  running_var = module.variable("batch_stats", "bn_var", jnp.ones, shape, jnp.float32)
  if use_running_average:
    if offset is not None:
      y = y + offset
    mean, var = running_mean.value, running_var.value
  else:
    w = jnp.ones(y.shape[:-1], y.dtype) if weight is None else weight.astype(y.dtype)
    w = jnp.broadcast_to(w, y.shape[:-1])[..., None]                         # [..., B, 1]
    count = jnp.sum(w, axis=-2)                                               # [..., 1]
    mean = jnp.sum(w * y, axis=-2) / jnp.maximum(count, 1.0)
    var = jnp.sum(w * jnp.square(y - mean[..., None, :]), axis=-2) / jnp.maximum(count, 1.0)
    if not module.is_initializing():
      m = BATCH_NORM_MOMENTUM
      unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
      seen = count > 0  # an all-padding batch leaves the statistics alone
      batch_mean = mean if offset is None else mean + offset
      running_mean.value = jnp.where(
          seen, (1 - m) * running_mean.value + m * jax.lax.stop_gradient(batch_mean),
          running_mean.value)
      running_var.value = jnp.where(
          seen, (1 - m) * running_var.value + m * jax.lax.stop_gradient(unbiased),
          running_var.value)
  normalised = (y - mean[..., None, :]) * jax.lax.rsqrt(var[..., None, :] + BATCH_NORM_EPSILON)
  return normalised.astype(out_dtype)


def linear_batch_norm(module: nn.Module, x: jax.Array, features: int,
                      mask: jax.Array | None, use_running_average: bool) -> jax.Array:
  """BatchNorm(x @ kernel + bias): torch's Linear then BatchNorm1d, with `module`'s
  parameters kernel, bias, bn_scale, bn_bias and statistics bn_mean, bn_var.

  The bias is kept out of the batch statistics (`normalise`'s `offset`): the same
  values as normalising x @ kernel + bias, but the bias's train-mode gradient is
  exactly zero instead of rounding noise, and a bias much larger than x @ kernel
  (M2M's scenario layer reads a domain embedding of scale 1e-4) cancels none of
  the signal's digits.
  """
  fan_in = x.shape[-1]
  kernel = module.param("kernel", torch_linear_kernel_init, (fan_in, features))
  bias = module.param("bias", torch_linear_bias_init(fan_in), (features,))
  scale = module.param("bn_scale", nn.initializers.ones, (features,))
  shift = module.param("bn_bias", nn.initializers.zeros, (features,))
  normalised = normalise(module, x @ like(kernel, x), mask, use_running_average, offset=bias)
  return normalised * like(scale, x) + like(shift, x)


class BlockBN(nn.Module):
  """relu(BatchNorm(x @ kernel + bias)); parameters kernel, bias, bn_scale, bn_bias.

  Called as `BlockBN(features, use_running_average)(x, mask)`.
  """
  features: int
  use_running_average: bool

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    return jax.nn.relu(linear_batch_norm(self, x, self.features, mask,
                                         self.use_running_average))


def bank(module_cls, size: int, in_axes=None):
  """`module_cls` vmapped into `size` modules with parameters (and BatchNorm
  statistics) stacked on axis 0.

  With the default `in_axes=None` every member reads the same input; outputs are
  stacked on axis 0.
  """
  return nn.vmap(
      module_cls,
      variable_axes={"params": 0, "batch_stats": 0},
      split_rngs={"params": True},
      in_axes=in_axes,
      out_axes=0,
      axis_size=size,
  )


def padded_rows(vocab: int, multiple: int) -> int:
  """Rows of a table for `vocab` ids: `vocab` rounded up to a multiple of `multiple`."""
  return -(-vocab // multiple) * multiple


class Embeddings(nn.Module):
  """One table per sparse feature; concatenates the looked-up rows and dense values.

  A feature reads `widths[k]` columns of `sparse` (one, unless it is
  multi-valued; empty `widths`: one each). A multi-valued feature's embedding
  is the mean of the rows of its non-zero ids (id 0, out of vocabulary, also
  fills the unused slots); with no such id it is row 0.

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
  dtype: jnp.dtype = jnp.float32  # of the output; the tables stay float32
  widths: Sequence[int] = ()

  @nn.compact
  def __call__(self, sparse: jax.Array, dense: jax.Array) -> jax.Array:
    normal = nn.initializers.normal(self.init_std)
    widths = tuple(self.widths) or (1,) * len(self.feature_names)
    columns = []
    first = 0
    for name, vocab, width in zip(self.feature_names, self.vocab_sizes, widths):

      def init(key, shape, vocab=vocab):
        return jnp.pad(normal(key, (vocab, shape[1])), ((0, shape[0] - vocab), (0, 0)))

      rows = padded_rows(vocab, self.rows_multiple)
      table = self.param(name, init, (rows, self.embed_dim))
      ids = sparse[:, first:first + width]
      first += width
      if rows != vocab:
        ids = jnp.minimum(ids, vocab - 1)
      looked_up = jnp.take(table, ids, axis=0, mode="clip")                  # [B, w, e]
      if width == 1:
        columns.append(looked_up[:, 0])
        continue
      present = (ids != 0).astype(looked_up.dtype)[..., None]                 # [B, w, 1]
      count = jnp.sum(present, axis=1)                                        # [B, 1]
      pooled = jnp.sum(looked_up * present, axis=1) / jnp.maximum(count, 1.0)
      columns.append(jnp.where(count > 0, pooled, looked_up[:, 0]))
    return jnp.concatenate(columns + [at_least_float32(dense)], axis=-1).astype(self.dtype)


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
    kernels = like((shared_kernel[None] * domain_kernel).reshape(-1, self.features), x)
    return slotted @ kernels + like(shared_bias, x) + own @ like(domain_bias, x)


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
