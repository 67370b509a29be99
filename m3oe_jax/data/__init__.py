"""Datasets: one entry point from a data config to a `Dataset`."""

from __future__ import annotations

import ml_collections

from m3oe_jax.data.pipeline import ArraySource, Dataset, RowSource
from m3oe_jax.data.schema import FeatureSchema


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
  """Builds or loads the dataset named by `config.name`."""
  if config.name == "synthetic":
    from m3oe_jax.data import synthetic
    return synthetic.make_dataset(config)
  if config.name in ("kuairand", "movielens"):
    from m3oe_jax.data import tfds_loader
    return tfds_loader.load(config)
  raise ValueError(
      f"config.data.name={config.name!r} is not a known dataset; "
      "expected one of 'synthetic', 'kuairand', 'movielens'")


__all__ = ["ArraySource", "Dataset", "FeatureSchema", "RowSource", "load_dataset"]
