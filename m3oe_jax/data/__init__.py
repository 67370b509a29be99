"""Datasets: one entry point from a data config to a `Dataset`.

`check_config` and `load_dataset` find the dataset through the one registry,
`datasets.DATASETS`: a dataset made in memory checks and loads itself; one
prepared from raw files is checked, prepared and loaded by `prepared.py`.
"""

from __future__ import annotations

import types

import ml_collections

from m3oe_jax.data import datasets, variants
from m3oe_jax.data.pipeline import ArraySource, Dataset, RowSource
from m3oe_jax.data.schema import FeatureSchema


def _maker(name) -> types.ModuleType:
  """What checks and loads dataset `name`: its own module, or `prepared.py`
  for the datasets prepared from raw files."""
  dataset = datasets.module(name)
  if datasets.prepared_from_raw(dataset):
    from m3oe_jax.data import prepared  # pylint: disable=g-import-not-at-top
    return prepared
  return dataset


def is_paper_data(name: str, schema: FeatureSchema) -> bool:
  """Whether a prepared dataset is the paper's own: prepared from the official archive
  (by the checksum recorded at preparation) of a dataset of the paper's Table 2."""
  archive = getattr(datasets.module(name), "PAPER_ARCHIVE", None)
  return archive is not None and schema.source.get("checksum") == archive.checksum


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses, before any data is generated, read or prepared, a `config.data`
  naming an unknown dataset or holding settings that dataset cannot use."""
  _maker(config.name).check_config(config)


def load_dataset(config: ml_collections.ConfigDict,
                 variant: ml_collections.ConfigDict | None = None) -> Dataset:
  """Builds or loads the dataset named by `config.name`, then keeps the domains
  and tasks of `variant` (the run config's `variant` section; see
  `data/variants.py`)."""
  dataset = _maker(config.name).load(config)
  if variant is None:
    return dataset
  return variants.select(dataset, variant.domains, variant.tasks,
                         bool(variant.per_variant_split))


__all__ = ["ArraySource", "Dataset", "FeatureSchema", "RowSource", "check_config",
           "is_paper_data", "load_dataset"]
