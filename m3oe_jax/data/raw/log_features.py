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
  sparse: np.ndarray  # int32 (int64 for > 2**31 hash buckets) [n, sum of the categorical
  #                     widths]: each encoder's codes
  dense: np.ndarray  # float64 [n, Q]: transformed, not yet scaled; NaN for no value
  matched: np.ndarray  # bool [n]: the row has a match in every side table


@dataclasses.dataclass
class _PackedTable:
  """One side table's columns side by side, so a log batch gathers its rows once."""
  codes: np.ndarray | None  # [table rows, W]: its categorical features' codes
  no_value: np.ndarray | None  # [W]: the codes of a log row without a match
  to_sparse: list  # (the batch's sparse columns, the packed columns) per feature
  values: np.ndarray | None  # float64 [table rows, V]: its dense features
  to_dense: list  # (dense index, packed index) per dense feature


class LogFeatures:
  """Reads the side tables once (their categorical columns through `encoders`),
  then the features of each log batch."""

  def __init__(self, d: Declaration, encoders: Mapping[str, roles.CategoricalEncoder],
               chunk_rows: int):
    self.declaration = d
    self.encoders = encoders
    scaling = dict(d.dense)
    # Codes are StringCoder codes or hashed ids: int32 unless a hash has more
    # buckets (the spill narrows to int32 anyway; fewer bytes to move).
    self.code_type = (np.int32 if all(c.vocabulary.buckets < 2**31 for c in d.categorical)
                      else np.int64)

    def side_converter(column):
      if column in encoders:
        return lambda col, _c, _p: encoders[column](col).astype(self.code_type)
      return lambda col, c, place: roles.dense(col, c, scaling[column], place)

    self.joined = [side_tables.load(t, {c: side_converter(c) for c in t.columns}, chunk_rows)
                   for t in d.side_tables]
    self._from_side = {c for j in self.joined for c in j.spec.columns}
    starts = np.cumsum([0] + [c.max_values for c in d.categorical])
    self._slots = [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]
    self.width = int(starts[-1])
    self._packed = {j.spec.name: self._pack(j) for j in self.joined}

  def _pack(self, side) -> _PackedTable:
    d = self.declaration
    cats = [(c, slots) for c, slots in zip(d.categorical, self._slots)
            if c.name in side.columns]
    codes = no_value = values = None
    to_sparse, first = [], 0
    if cats:
      codes = np.concatenate([side.columns[c.name].reshape(-1, c.max_values)
                              for c, _ in cats], axis=1)
      no_value = np.concatenate([np.full(c.max_values, self.encoders[c.name].none, codes.dtype)
                                 for c, _ in cats])
      for c, slots in cats:
        to_sparse.append((slots, slice(first, first + c.max_values)))
        first += c.max_values
    dense = [(q, c) for q, (c, _) in enumerate(d.dense) if c in side.columns]
    if dense:
      values = np.stack([np.asarray(side.columns[c], np.float64) for _, c in dense], axis=1)
    return _PackedTable(codes, no_value, to_sparse, values,
                        [(q, i) for i, (q, _) in enumerate(dense)])

  def read(self, batch: pa.Table, place: roles.Place) -> BatchFeatures:
    d = self.declaration
    n = batch.num_rows
    matches = {j.spec.name: j.join(batch) for j in self.joined}
    sparse = np.empty((n, self.width), self.code_type)
    dense = np.zeros((n, len(d.dense)))
    for name, table in self._packed.items():
      rows, found = matches[name]
      if table.codes is not None:
        got = _matched_rows(table.codes, rows, found, table.no_value)
        for slots, at in table.to_sparse:
          sparse[:, slots] = got[:, at]
      if table.values is not None:
        got = _matched_rows(table.values, rows, found, np.nan)
        for q, i in table.to_dense:
          dense[:, q] = got[:, i]
    for c, slots in zip(d.categorical, self._slots):
      if c.name not in self._from_side:
        sparse[:, slots] = self.encoders[c.name](batch.column(c.name))
    for q, (c, kind) in enumerate(d.dense):
      if c not in self._from_side:
        dense[:, q] = roles.dense(batch.column(c), c, kind, place)
    matched = np.logical_and.reduce([found for _, found in matches.values()]) if matches \
        else np.ones(n, bool)
    return BatchFeatures(sparse, dense, matched)


def _matched_rows(packed: np.ndarray, rows: np.ndarray, found: np.ndarray, no_value):
  """The packed table's rows of a batch's matches; `no_value` where nothing matched."""
  got = packed[rows]
  if not found.all():
    got[~found] = no_value
  return got
