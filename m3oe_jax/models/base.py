"""The contract every ranking model of the trainer follows.

A model is a Flax module, a subclass of `RankingModel`, called as

    logits, aux = model.apply(variables, batch, train=...)

with `variables = {'params': ...}` plus `'batch_stats'` for models with
BatchNorm (in train mode pass `mutable=['batch_stats']`), and a batch dict of
`sparse` [B, W] int ids (one column per sparse feature, or several for a
multi-valued one: `sparse_widths`, pooled by the shared `Embeddings`), `dense` [B, Q] floats, `domain` [B] ids and, optionally,
`mask` [B] (1 for real rows, 0 for padding; BatchNorm statistics skip padding).

It returns `logits` [B, T], each example scored by its own domain's heads, and
`aux`, a dict of optional diagnostics:
  - an array whose leading axis is the batch ([B, T, K] for per-task values such
    as M3oE's gate weights) is averaged per domain over the validation split;
  - a dict of scalars (M3oE's fusion weights) is logged as it is.
A model without diagnostics returns an empty dict.

Precision: `dtype` (`config.model.dtype`, "float32" or "bfloat16") is the compute
dtype. Parameters, BatchNorm statistics and gradients stay float32; the embedding
output is cast to `dtype`, and every layer casts its parameters to the dtype of
its input, so matmuls and activations run in `dtype`. LayerNorm and BatchNorm
statistics and softmax gates are computed in float32, and `logits` (and the
diagnostics) are float32 whatever `dtype` is. "float64" (with JAX_ENABLE_X64=1)
makes all of it float64, weights included: the mode of the trajectory tests,
which follow another trainer step by step where float32 rounding would not do.

Conventions that the rest of the code relies on, and nothing else:
  - embedding tables live under the top-level parameter scopes named in
    `TABLE_SCOPES` (default `embedding/<feature>`, [rows, width]); they are the
    parameters a mesh may row-shard;
  - parameters under the top-level key `arch` are architecture weights, trained
    by the bilevel schedule; a model without them trains with schedule 'none';
  - every dataclass field after the shared ones below is an option with a
    default: the config section `config.model.<name>` overrides them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from m3oe_jax.errors import ConfigError, is_number, is_whole
from m3oe_jax.models.layers import Embeddings

# Fields every model takes, filled from the dataset's schema...
DATA_FIELDS = ("feature_names", "vocab_sizes", "num_domains", "num_tasks", "sparse_widths")
# ... and from the shared part of `config.model`.
SHARED_FIELDS = ("embed_dim", "embed_init_std", "embed_rows_multiple", "dtype")
# `config.model.dtype` -> the compute dtype.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def resolve_dtype(name: str):
  """The compute dtype `config.model.dtype` names; refuses any other value, and
  float64 where JAX runs without 64-bit types."""
  if not isinstance(name, str) or name not in DTYPES:
    raise ConfigError(f"config.model.dtype={name!r} must be one of {sorted(DTYPES)}")
  if name == "float64" and not jax.config.jax_enable_x64:
    raise ConfigError("config.model.dtype='float64' needs JAX's 64-bit types: set "
                      "JAX_ENABLE_X64=1 in the environment of the run")
  return DTYPES[name]


class RankingModel(nn.Module):
  """Base of every registered model: its data-given and shared fields."""
  feature_names: Sequence[str]
  vocab_sizes: Sequence[int]
  num_domains: int
  num_tasks: int
  embed_dim: int = 16
  embed_init_std: float = 1e-4
  embed_rows_multiple: int = 1
  dtype: str = "float32"
  # Columns of `sparse` per feature (the schema's); empty: one each.
  sparse_widths: Sequence[int] = ()

  # The model's name in the registry and its config section, `config.model.<NAME>`.
  NAME: ClassVar[str] = ""
  # Option overrides that make the model small, for the configs' `tiny` variants.
  TINY: ClassVar[Mapping[str, Any]] = {}
  # Top-level parameter scopes whose [rows, width] leaves are embedding tables.
  TABLE_SCOPES: ClassVar[tuple[str, ...]] = ("embedding",)

  @property
  def compute_dtype(self):
    """The dtype of matmuls and activations (`config.model.dtype`)."""
    return resolve_dtype(self.dtype)

  def embeddings(self, **kwargs) -> Embeddings:
    """The model's tables; their output is in the compute dtype. In `setup`,
    assign it to `self.embedding`."""
    return Embeddings(self.feature_names, self.vocab_sizes, self.embed_dim,
                      self.embed_init_std, self.embed_rows_multiple,
                      dtype=self.compute_dtype, widths=tuple(self.sparse_widths), **kwargs)

  def embed(self, batch):
    """x = concat(table lookups, dense values) [B, F], from a compact `__call__`."""
    return self.embeddings(name="embedding")(batch["sparse"], batch["dense"])

  def check_options(self) -> None:
    """Refuses option values the model cannot be built with, whatever the data
    (`models.check_config` calls it before any data is prepared). A model with
    options of its own extends it."""
    for name in ("embed_dim", "embed_rows_multiple"):
      value = getattr(self, name)
      if not is_whole(value) or value < 1:
        raise ConfigError(f"config.model.{name}={value!r} must be a whole number >= 1")
    std = self.embed_init_std
    if not is_number(std) or not 0 <= std < np.inf:
      raise ConfigError(f"config.model.embed_init_std={std!r} must be a finite number >= 0")
    resolve_dtype(self.dtype)

  def check_data(self) -> None:
    """Refuses options that do not fit the data's features, domains or tasks."""
    for name in ("num_domains", "num_tasks"):
      if getattr(self, name) < 1:
        raise ConfigError(f"the data has {getattr(self, name)} {name[4:]}; a model "
                          "needs at least one")

  def validate(self) -> None:
    """Both checks; every model calls it first in `setup` or `__call__`."""
    self.check_options()
    self.check_data()

  def check_positive(self, **values) -> None:
    """Refuses options that are not whole numbers >= 1 (or lists of them),
    naming them as config fields."""
    for name, value in values.items():
      flat = value if isinstance(value, (tuple, list)) else (value,)
      if not all(is_whole(v) and v >= 1 for v in flat):
        what = "positive integers" if flat is value else "a positive integer"
        raise ConfigError(f"config.model.{self.NAME}.{name}={value!r} must be {what}")


def model_options(cls: type[RankingModel]) -> dict[str, Any]:
  """A model's own options and their defaults (not the data-given or shared fields)."""
  skip = set(DATA_FIELDS) | set(SHARED_FIELDS) | {"parent", "name"}
  options = {}
  for field in dataclasses.fields(cls):
    if field.name in skip:
      continue
    if field.default is not dataclasses.MISSING:
      options[field.name] = field.default
    elif field.default_factory is not dataclasses.MISSING:
      options[field.name] = field.default_factory()
    else:
      raise TypeError(f"{cls.__name__}.{field.name} needs a default: every model option has one")
  return options


def per_domain_means(values, domain: np.ndarray, num_domains: int) -> np.ndarray:
  """Means of per-example `values` [N, ...] over each domain's rows: [D, ...]."""
  values = np.asarray(values)
  return np.stack([values[domain == d].mean(0) if np.any(domain == d)
                   else np.full(values.shape[1:], np.nan) for d in range(num_domains)])
