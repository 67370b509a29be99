"""Helpers for experiment config files."""

import ml_collections


def with_tuples(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same config with every list turned into a tuple.

  ml_collections can override tuple fields from the command line
  (`--config.model.fcn_dims='(512, 256, 256, 64)'`) but not list fields.
  """

  def convert(value):
    if isinstance(value, dict):
      return {k: convert(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return tuple(convert(v) for v in value)
    return value

  return ml_collections.ConfigDict(convert(config.to_dict()))
