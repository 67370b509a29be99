"""The declared features of a files dataset's log rows: side tables joined,
each column converted by its role.

Preparation (`datasets/files.py`) and prediction (`m3oe_jax/predict.py`) both
read a log batch's features here, so new rows are read exactly as the training
rows were; only their categorical encoders differ (codes collected into
vocabularies, or the prepared vocabularies frozen).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import pyarrow as pa

from m3oe_jax.data.raw import roles, side_tables
from m3oe_jax.data.raw.declaration import Declaration


@dataclasses.dataclass
class BatchFeatures:
  sparse: np.ndarray  # int64 [n, sum of the categorical widths]: each encoder's codes
  dense: np.ndarray  # float64 [n, Q]: transformed, not yet scaled; NaN for no value
  matched: np.ndarray  # bool [n]: the row has a match in every side table


class LogFeatures:
  """Reads the side tables once (their categorical columns through `encoders`),
  then the features of each log batch."""

  def __init__(self, d: Declaration, encoders: Mapping[str, roles.CategoricalEncoder],
               chunk_rows: int):
    self.declaration = d
    self.encoders = encoders
    scaling = dict(d.dense)

    def side_converter(column):
      if column in encoders:
        return lambda col, _c, _p: encoders[column](col)
      return lambda col, c, place: roles.dense(col, c, scaling[column], place)

    self.joined = [side_tables.load(t, {c: side_converter(c) for c in t.columns}, chunk_rows)
                   for t in d.side_tables]
    self._from_side = {c: j for j in self.joined for c in j.spec.columns}
    starts = np.cumsum([0] + [c.max_values for c in d.categorical])
    self._slots = [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]
    self.width = int(starts[-1])

  def read(self, batch: pa.Table, place: roles.Place) -> BatchFeatures:
    d = self.declaration
    n = batch.num_rows
    matches = {j.spec.name: j.join(batch) for j in self.joined}
    sparse = np.empty((n, self.width), np.int64)
    for c, slots in zip(d.categorical, self._slots):
      if c.name in self._from_side:
        side = self._from_side[c.name]
        rows, found = matches[side.spec.name]
        sparse[:, slots] = side.columns[c.name][rows]
        if not found.all():
          sparse[~found, slots] = self.encoders[c.name].none
      else:
        sparse[:, slots] = self.encoders[c.name](batch.column(c.name))
    dense = np.zeros((n, len(d.dense)))
    for q, (c, kind) in enumerate(d.dense):
      if c in self._from_side:
        rows, found = matches[self._from_side[c].spec.name]
        dense[:, q] = np.where(found, self._from_side[c].columns[c][rows], np.nan)
      else:
        dense[:, q] = roles.dense(batch.column(c), c, kind, place)
    matched = np.logical_and.reduce([found for _, found in matches.values()]) if matches \
        else np.ones(n, bool)
    return BatchFeatures(sparse, dense, matched)
