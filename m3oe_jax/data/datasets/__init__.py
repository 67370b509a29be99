"""The dataset registry: every `config.data.name` and the module that defines it.

A dataset module makes its data in one of two ways:
  * in memory (`synthetic`): it defines `check_config(data_config)` and
    `load(data_config) -> Dataset`;
  * prepared once from raw files (`movielens`, `kuairand`, `files`: the user's
    own logs, declared in `config.data.files`): it defines
    `BUILDER`, its TFDS builder class (a `raw.builder.RawTableBuilder`),
    `DEFAULT_SETTINGS` and `make_config(**settings)`, which validates them;
    `data/prepared.py` checks, prepares and loads it.
A new dataset is one more module here and one more entry in `DATASETS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from m3oe_jax.errors import ConfigError

# name -> module; imported when first used (the raw datasets import TFDS).
DATASETS = {
    "synthetic": "m3oe_jax.data.datasets.synthetic",
    "kuairand": "m3oe_jax.data.datasets.kuairand",
    "movielens": "m3oe_jax.data.datasets.movielens",
    "files": "m3oe_jax.data.datasets.files",
}


def module(name) -> ModuleType:
  """The module of dataset `name`; a ConfigError for a name not in `DATASETS`."""
  if not isinstance(name, str) or name not in DATASETS:
    raise ConfigError(f"config.data.name={name!r} is not a known dataset; expected one of "
                      f"{tuple(DATASETS)}")
  return importlib.import_module(DATASETS[name])


def prepared_from_raw(dataset: ModuleType) -> bool:
  """Whether `dataset` is prepared from raw files by a TFDS builder (else it is
  made in memory)."""
  return hasattr(dataset, "BUILDER")
