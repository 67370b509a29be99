"""The model interface every ranking model of the trainer follows.

A model is a Flax module called as `model.apply({'params': params}, batch)` with a
batch dict (`sparse` [B, S], `dense` [B, Q], `domain` [B]) that returns
`(logits, aux)`: logits [B, T] for each example's own domain, and a dict of
named diagnostics (for M3oE: `gates` [B, T, E] and `fusion_weights`).

Parameters under the top-level key `arch` are architecture weights; all others
are model weights (see `param_groups`).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.models.m3oe import M3oE

ARCH_GROUP = "arch"
MODEL_GROUP = "model"


def build_model(config: ml_collections.ConfigDict, schema: FeatureSchema):
  """The model named by `config.name`, sized by the dataset's schema."""
  bad = [n for n in schema.sparse_names if "/" in n]
  if bad:
    raise ValueError(f"sparse feature names may not contain '/': {bad}")
  if config.name == "m3oe":
    return M3oE(
        feature_names=schema.sparse_names,
        vocab_sizes=schema.vocab_sizes,
        num_domains=schema.num_domains,
        num_tasks=schema.num_tasks,
        embed_dim=config.embed_dim,
        fcn_dims=tuple(config.fcn_dims),
        num_shared_experts=config.num_shared_experts,
        arch_init=config.arch_init,
        gate_stop_gradient=config.gate_stop_gradient,
        embed_init_std=config.embed_init_std,
        embed_rows_multiple=config.get("embed_rows_multiple", 1),
    )
  raise ValueError(f"config.model.name={config.name!r} is not a known model; "
                   "expected 'm3oe'")


def dummy_batch(schema: FeatureSchema, batch_size: int = 2) -> dict[str, np.ndarray]:
  return {
      "sparse": np.zeros((batch_size, schema.num_sparse), np.int32),
      "dense": np.zeros((batch_size, schema.num_dense), np.float32),
      "domain": np.zeros((batch_size,), np.int32),
  }


def init_params(model, schema: FeatureSchema, rng: jax.Array):
  return jax.jit(model.init)(rng, dummy_batch(schema))["params"]


def param_groups(params) -> Any:
  """A pytree like `params` labelling each leaf 'arch' or 'model'."""
  return {k: jax.tree.map(lambda _, k=k: ARCH_GROUP if k == ARCH_GROUP else MODEL_GROUP, v)
          for k, v in params.items()}


def export_weights(params, schema: FeatureSchema | None = None) -> dict[str, np.ndarray]:
  """The parameters as a flat {'a/b/c': array} mapping (spec section 7 names).

  With `schema`, each embedding table is cut to its vocabulary (its padding rows,
  see `model.embed_rows_multiple`, dropped), giving the spec's shapes.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  named = {name: np.asarray(value) for name, value in flat.items()}
  if schema is not None:
    for feature, vocab in zip(schema.sparse_names, schema.vocab_sizes):
      named[f"embedding/{feature}"] = named[f"embedding/{feature}"][:vocab]
  return named


def import_weights(named: Mapping[str, Any], template) -> Any:
  """Builds a parameter tree like `template` from a flat mapping of named arrays.

  Every name of the template must be present with the same shape, and no other
  names may be given; otherwise the error lists the offending names. An embedding
  table may have fewer rows than the template's (padded) one: the rest are zeros.
  """
  expected = flax.traverse_util.flatten_dict(flax.core.unfreeze(template), sep="/")
  named = dict(named)
  for name in expected:
    rows = expected[name].shape[0] if expected[name].ndim else 0
    if name.startswith("embedding/") and name in named and 0 < len(named[name]) < rows:
      value = np.asarray(named[name])
      named[name] = np.pad(value, ((0, rows - len(value)),) + ((0, 0),) * (value.ndim - 1))
  missing = sorted(set(expected) - set(named))
  unexpected = sorted(set(named) - set(expected))
  wrong_shape = [
      f"{name}: got {tuple(np.shape(named[name]))}, expected {tuple(expected[name].shape)}"
      for name in sorted(set(expected) & set(named))
      if tuple(np.shape(named[name])) != tuple(expected[name].shape)
  ]
  problems = []
  if missing:
    problems.append(f"missing weights: {missing}")
  if unexpected:
    problems.append(f"unexpected weights: {unexpected}")
  if wrong_shape:
    problems.append(f"wrong shapes: {wrong_shape}")
  if problems:
    raise ValueError("cannot import weights; " + "; ".join(problems))
  flat = {tuple(name.split("/")): jnp.asarray(named[name], expected[name].dtype)
          for name in expected}
  return flax.traverse_util.unflatten_dict(flat)
