"""Building blocks: the `Block` layer, expert MLPs and banks of stacked modules."""

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


def layer_norm(y: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
  mean = jnp.mean(y, axis=-1, keepdims=True)
  centred = y - mean
  var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
  return centred * jax.lax.rsqrt(var + LAYER_NORM_EPSILON) * scale + bias


def affine(module: nn.Module, x: jax.Array, features: int) -> jax.Array:
  """x @ kernel + bias with `module`'s parameters `kernel` [in, features] and `bias`."""
  fan_in = x.shape[-1]
  kernel = module.param("kernel", torch_linear_kernel_init, (fan_in, features))
  bias = module.param("bias", torch_linear_bias_init(fan_in), (features,))
  return x @ kernel + bias


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


def bank(module_cls, size: int, in_axes=None):
  """`module_cls` vmapped into `size` modules with parameters stacked on axis 0.

  With the default `in_axes=None` every member reads the same input; outputs are
  stacked on axis 0.
  """
  return nn.vmap(
      module_cls,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=in_axes,
      out_axes=0,
      axis_size=size,
  )
