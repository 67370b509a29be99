"""Datasets: one entry point from a data config to a `Dataset`."""

from __future__ import annotations

import ml_collections

from m3oe_jax.data import variants
from m3oe_jax.data.pipeline import ArraySource, Dataset, RowSource
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.errors import ConfigError


DATASETS = ("synthetic", "kuairand", "movielens")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses, before any data is generated, read or prepared, a `config.data`
  naming an unknown dataset or holding settings that dataset cannot use."""
  if config.name == "synthetic":
    from m3oe_jax.data import synthetic
    synthetic.check_config(config)
  elif config.name in DATASETS:
    from m3oe_jax.data import tfds_loader
    tfds_loader.check_config(config)
  else:
    raise _unknown_dataset(config.name)


def _unknown_dataset(name) -> ConfigError:
  return ConfigError(f"config.data.name={name!r} is not a known dataset; expected one of "
                     f"{DATASETS}")


def load_dataset(config: ml_collections.ConfigDict,
                 variant: ml_collections.ConfigDict | None = None) -> Dataset:
  """Builds or loads the dataset named by `config.name`, then keeps the domains
  and tasks of `variant` (the run config's `variant` section; see
  `data/variants.py`)."""
  if config.name == "synthetic":
    from m3oe_jax.data import synthetic
    dataset = synthetic.make_dataset(config)
  elif config.name in DATASETS:
    from m3oe_jax.data import tfds_loader
    dataset = tfds_loader.load(config)
  else:
    raise _unknown_dataset(config.name)
  if variant is None:
    return dataset
  return variants.select(dataset, variant.domains, variant.tasks,
                         bool(variant.per_variant_split))


__all__ = ["ArraySource", "Dataset", "FeatureSchema", "RowSource", "check_config",
           "load_dataset"]
