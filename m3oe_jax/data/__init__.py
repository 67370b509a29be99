"""Datasets: one entry point from a data config to a `Dataset`."""

from __future__ import annotations

import ml_collections

from m3oe_jax.data import variants
from m3oe_jax.data.pipeline import ArraySource, Dataset, RowSource
from m3oe_jax.data.schema import FeatureSchema


def load_dataset(config: ml_collections.ConfigDict,
                 variant: ml_collections.ConfigDict | None = None) -> Dataset:
  """Builds or loads the dataset named by `config.name`, then keeps the domains
  and tasks of `variant` (the run config's `variant` section; see
  `data/variants.py`)."""
  if config.name == "synthetic":
    from m3oe_jax.data import synthetic
    dataset = synthetic.make_dataset(config)
  elif config.name in ("kuairand", "movielens"):
    from m3oe_jax.data import tfds_loader
    dataset = tfds_loader.load(config)
  else:
    raise ValueError(
        f"config.data.name={config.name!r} is not a known dataset; "
        "expected one of 'synthetic', 'kuairand', 'movielens'")
  if variant is None:
    return dataset
  return variants.select(dataset, variant.domains, variant.tasks,
                         bool(variant.per_variant_split))


__all__ = ["ArraySource", "Dataset", "FeatureSchema", "RowSource", "load_dataset"]
