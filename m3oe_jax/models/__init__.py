"""Models: the registry, building a model from the config, its variables and
their named export. The contract a model follows is in `models/base.py`.

Adding a model: write `models/<name>.py` with a `RankingModel` subclass and add
one line to `MODELS`. Its options and their defaults become the config section
`config.model.<name>`; nothing else changes.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.errors import ConfigError
from m3oe_jax.models.base import SHARED_FIELDS, RankingModel, model_options

# name -> "module:Class". The name selects the model (`--config.model.name=mmoe`).
MODELS = {
    "m3oe": "m3oe_jax.models.m3oe:M3oE",
    "mlp": "m3oe_jax.models.mlp:MLPBaseline",
    "star": "m3oe_jax.models.star:STAR",
    "adatt": "m3oe_jax.models.adatt:AdaTT",
    "adatt_sp": "m3oe_jax.models.adatt:AdaTTSp",
    "m2m": "m3oe_jax.models.m2m:M2M",
    "mmoe": "m3oe_jax.models.mmoe:MMoE",
    "ple": "m3oe_jax.models.ple:PLE",
    "shared_bottom": "m3oe_jax.models.shared_bottom:SharedBottom",
}

ARCH_GROUP = "arch"
MODEL_GROUP = "model"


def model_class(name: str) -> type[RankingModel]:
  if not isinstance(name, str) or name not in MODELS:
    raise ConfigError(f"config.model.name={name!r} is not a known model; "
                      f"expected one of {sorted(MODELS)}")
  module, cls_name = MODELS[name].split(":")
  cls = getattr(importlib.import_module(module), cls_name)
  if cls.NAME != name:
    raise TypeError(f"{MODELS[name]}.NAME is {cls.NAME!r}, registered as {name!r}")
  return cls


def default_model_config(name: str = "m3oe") -> ml_collections.ConfigDict:
  """`config.model`: the selected name, the shared fields, and a section per
  registered model holding that model's options at their defaults."""
  config = ml_collections.ConfigDict()
  config.name = name
  config.embed_dim = 16
  config.embed_init_std = 1e-4
  config.embed_rows_multiple = 1
  config.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (models/base.py)
  for registered in MODELS:
    config[registered] = ml_collections.ConfigDict(model_options(model_class(registered)))
  return config


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses, before any data is prepared, a `config.model` naming a model that
  is not registered, or whose section or shared fields that model cannot be
  built with (each model's `check_options`)."""
  cls = model_class(config.name)
  cls(feature_names=("domain",), vocab_sizes=(1,), num_domains=1, num_tasks=1,
      **_model_fields(config, cls)).check_options()


def _model_fields(config: ml_collections.ConfigDict, cls: type[RankingModel]) -> dict:
  """The shared fields and the options of `cls` (absent options at their defaults)."""
  options = model_options(cls)
  given = dict(config.get(config.name, {}) or {})
  unknown = sorted(set(given) - set(options))
  if unknown:
    raise ConfigError(f"config.model.{config.name} has fields {unknown} that model "
                      f"{config.name!r} does not take; its options are {sorted(options)}")
  shared = {field: config[field] for field in SHARED_FIELDS if field in config}
  options.update(given)
  return {**shared, **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}}


def build_model(config: ml_collections.ConfigDict, schema: FeatureSchema) -> RankingModel:
  """The model named by `config.name`, sized by the dataset's schema, with the
  options of its section `config.<name>` (absent options keep their defaults)."""
  bad = [n for n in schema.sparse_names if "/" in n]
  if bad:
    raise ValueError(f"sparse feature names may not contain '/': {bad}")
  cls = model_class(config.name)
  model = cls(feature_names=tuple(schema.sparse_names), vocab_sizes=tuple(schema.vocab_sizes),
              num_domains=schema.num_domains, num_tasks=schema.num_tasks,
              sparse_widths=tuple(schema.sparse_widths), **_model_fields(config, cls))
  model.validate()
  return model


def dummy_batch(schema: FeatureSchema, batch_size: int = 2) -> dict[str, np.ndarray]:
  return {
      "sparse": np.zeros((batch_size, schema.sparse_width), np.int32),
      "dense": np.zeros((batch_size, schema.num_dense), np.float32),
      "domain": np.zeros((batch_size,), np.int32),
      "mask": np.ones((batch_size,), np.float32),
  }


def init_variables(model, schema: FeatureSchema, rng: jax.Array) -> dict:
  """{'params': ..., 'batch_stats': ... (empty for models without BatchNorm)}."""
  variables = jax.jit(lambda key: model.init(key, dummy_batch(schema), train=False))(rng)
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  if model.dtype == "float64":  # every weight and statistic in float64 too
    variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
  return variables


def init_params(model, schema: FeatureSchema, rng: jax.Array):
  return init_variables(model, schema, rng)["params"]


def has_arch_weights(params) -> bool:
  return ARCH_GROUP in params


def param_groups(params) -> Any:
  """A pytree like `params` labelling each leaf 'arch' or 'model'."""
  return {k: jax.tree.map(lambda _, k=k: ARCH_GROUP if k == ARCH_GROUP else MODEL_GROUP, v)
          for k, v in params.items()}


def export_weights(params, schema: FeatureSchema | None = None) -> dict[str, np.ndarray]:
  """The parameters as a flat {'a/b/c': array} mapping (the authors' weight names).

  With `schema`, each embedding table is cut to its vocabulary (its padding rows,
  see `model.embed_rows_multiple`, dropped), giving the authors' shapes.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  named = {name: np.asarray(value) for name, value in flat.items()}
  if schema is not None:
    for feature, vocab in zip(schema.sparse_names, schema.vocab_sizes):
      if f"embedding/{feature}" in named:
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


def read_weights_file(path, template: dict) -> dict:
  """{'params', 'batch_stats'} like `template` (a model's variables or their shapes)
  from an `.npz` of named arrays in the exchange layout, `params/<name>` and, for a
  model with BatchNorm, `batch_stats/<name>` (`export_weights`'s names)."""
  from m3oe_jax import paths  # pylint: disable=g-import-not-at-top
  path, named = paths.read_npz("init_weights", path, "weights")
  where = f"config.init_weights={path}"
  sections = {"params": {}, "batch_stats": {}}
  for name, value in named.items():
    section, _, rest = name.partition("/")
    if section not in sections or not rest:
      raise ConfigError(f"{where}: unexpected entry {name!r}; expected params/<name> and "
                        "batch_stats/<name>")
    sections[section][rest] = value
  variables = {}
  for section, arrays in sections.items():
    if not template.get(section):
      if arrays:
        raise ConfigError(f"{where}: the model has no {section}, the file has "
                          f"{sorted(arrays)[:5]}")
      variables[section] = {}
      continue
    try:
      variables[section] = import_weights(arrays, template[section])
    except ValueError as e:
      raise ConfigError(f"{where} ({section}): {e}") from None
  return variables
