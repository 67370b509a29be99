"""Columns of a files dataset turned into what preparation spills, by role.

Each function takes a pyarrow column of one record batch (text for CSV/TSV,
typed for Parquet) and `Place`, which names the file and the first row of the
batch, so a bad value is refused in one line naming file, column and row.
Empty text and missing values are "no value": a categorical feature's OOV id,
an error for a dense value, a label, the domain, a time or a split.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from m3oe_jax.data.raw import RawDataError, hashing, tables
from m3oe_jax.data.raw.encode import NO_VALUE, OOV_ID, ArrowStringCoder, frozen_ids


@dataclasses.dataclass(frozen=True)
class Place:
  """Where a batch's rows come from: its file and the number of its first row."""
  path: str
  first_row: int
  text: bool

  def at(self, i: int, column: str) -> str:
    return f"{tables.where(self.path, self.first_row + int(i), self.text)}, column {column!r}"


def _array(col) -> pa.Array:
  return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def as_text(col) -> pa.Array:
  """A column as strings, empty strings as missing."""
  a = _array(col)
  if not pa.types.is_string(a.type) and not pa.types.is_large_string(a.type):
    a = pc.cast(a, pa.string())
  return pc.if_else(pc.equal(a, ""), pa.scalar(None, a.type), a)


def _first_failure(a: pa.Array, convert: Callable[[pa.Array], object]) -> int:
  """The first element of `a` that `convert` refuses (bisection over slices)."""
  lo, hi = 0, len(a)
  while hi - lo > 1:
    mid = (lo + hi) // 2
    try:
      convert(a.slice(lo, mid - lo))
      lo = mid
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      hi = mid
  return lo


def _missing(a: pa.Array, column: str, place: Place, what: str) -> None:
  if a.null_count:
    i = int(np.flatnonzero(a.is_null().to_numpy(zero_copy_only=False))[0])
    raise RawDataError(f"{place.at(i, column)}: missing value ({what} must be given)")


def numbers(col, column: str, place: Place, what: str) -> np.ndarray:
  """A numeric column as float64; a missing value or one that is not a number
  is refused."""
  a = _array(col)
  if pa.types.is_string(a.type) or pa.types.is_large_string(a.type):
    a = as_text(a)
    _missing(a, column, place, what)
    convert = lambda x: pc.cast(pc.utf8_trim_whitespace(x), pa.float64())
    try:
      a = convert(a)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      i = _first_failure(a, convert)
      raise RawDataError(f"{place.at(i, column)}: {a[i].as_py()!r} is not a number "
                         f"({what})") from None
  elif pa.types.is_integer(a.type) or pa.types.is_floating(a.type) or pa.types.is_boolean(
      a.type) or pa.types.is_decimal(a.type):
    _missing(a, column, place, what)
    a = pc.cast(a, pa.float64())
  else:
    raise RawDataError(f"{place.path}, column {column!r}: type {a.type} is not a number "
                       f"({what})")
  values = a.to_numpy(zero_copy_only=False)
  bad = np.flatnonzero(~np.isfinite(values))
  if len(bad):
    raise RawDataError(f"{place.at(bad[0], column)}: {values[bad[0]]} is not a finite "
                       f"number ({what})")
  return values


def dense(col, column: str, scaling: str, place: Place) -> np.ndarray:
  """A dense feature's values, log1p-transformed under scaling 'log' (negative
  values refused)."""
  values = numbers(col, column, place, "a dense feature")
  if scaling != "log":
    return values
  bad = np.flatnonzero(values < 0)
  if len(bad):
    raise RawDataError(f"{place.at(bad[0], column)}: {values[bad[0]]} is negative, but "
                       "scaling 'log' takes log(1 + x) of values >= 0")
  return np.log1p(values)


def label(col, column: str, rule: str, threshold: float, place: Place) -> np.ndarray:
  """A task's 0/1 label by its rule: 'binary' (the value, which must be 0 or 1),
  'above' (value > threshold) or 'present' (a non-empty value)."""
  if rule == "present":
    return as_text(col).is_valid().to_numpy(zero_copy_only=False).astype(np.uint8)
  values = numbers(col, column, place, f"a label under rule {rule!r}")
  if rule == "above":
    return (values > threshold).astype(np.uint8)
  bad = np.flatnonzero((values != 0) & (values != 1))
  if len(bad):
    raise RawDataError(f"{place.at(bad[0], column)}: label {values[bad[0]]:g} is not 0 or 1 "
                       "(rule 'binary'; use rule 'above' with a threshold, or 'present')")
  return values.astype(np.uint8)


def lookup(col, mapping: dict[str, int]) -> np.ndarray:
  """Each value's index in `mapping` (int64; -1 for an unmapped or missing one)."""
  a = as_text(col)
  enc = a.dictionary_encode()
  table = np.array([mapping.get(s, -1) for s in enc.dictionary.to_pylist()] + [-1],
                   np.int64)
  idx = enc.indices.fill_null(len(table) - 1).to_numpy(zero_copy_only=False)
  return table[idx]


def mapped(col, column: str, mapping: dict[str, int], place: Place, what: str
           ) -> np.ndarray:
  """Like `lookup`, with an unmapped or missing value refused."""
  out = lookup(col, mapping)
  bad = np.flatnonzero(out < 0)
  if len(bad):
    value = as_text(col)[int(bad[0])].as_py()
    raise RawDataError(f"{place.at(bad[0], column)}: {value!r} is not one of the mapped "
                       f"values {sorted(mapping)[:10]} ({what})")
  return out


def times(col, column: str, place: Place) -> np.ndarray:
  """A time column as int64: numbers as they are (floored), dates and
  timestamps (also ISO 8601 text) as microseconds since the epoch."""
  a = _array(col)
  if pa.types.is_timestamp(a.type) or pa.types.is_date(a.type):
    _missing(a, column, place, "the time")
    return pc.cast(pc.cast(a, pa.timestamp("us")), pa.int64()).to_numpy(zero_copy_only=False)
  if pa.types.is_string(a.type) or pa.types.is_large_string(a.type):
    a = as_text(a)
    _missing(a, column, place, "the time")
    try:
      pc.cast(a.slice(0, 1), pa.float64())
    except pa.ArrowInvalid:  # not numbers: dates or timestamps
      convert = lambda x: pc.cast(pc.cast(x, pa.timestamp("us")), pa.int64())
      try:
        return convert(a).to_numpy(zero_copy_only=False)
      except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        i = _first_failure(a, convert)
        raise RawDataError(f"{place.at(i, column)}: {a[i].as_py()!r} is not a time (a "
                           "number, or an ISO 8601 date or timestamp)") from None
  return np.floor(numbers(a, column, place, "the time: a number, or an ISO 8601 date or "
                                          "timestamp")).astype(np.int64)


class CategoricalEncoder:
  """A categorical column's raw codes: StringCoder codes (vocabulary 'train'),
  NO_VALUE for no value; or final hashed ids in 1..buckets (vocabulary
  'hash'), 0 for no value. Given the prepared `vocabulary` of a 'train'
  feature, the codes are final model ids instead (`encode.frozen_ids`), 0 for
  no value or a value outside it. Multi-valued columns are split at `separator`
  into `max_values` slots (empty values skipped, values past the last slot
  dropped and counted in `truncated_rows`)."""

  def __init__(self, mode: str, buckets: int = 0, separator: str = "", max_values: int = 1,
               vocabulary: pa.Array | None = None):
    self.mode, self.buckets = mode, buckets
    self.separator, self.max_values = separator, max_values
    self.vocabulary = vocabulary
    self.coder = ArrowStringCoder() if mode == "train" and vocabulary is None else None
    self.none = NO_VALUE if self.coder is not None else OOV_ID
    self.truncated_rows = 0

  def _codes(self, a: pa.Array) -> np.ndarray:
    if self.coder is not None and 4 * len(self.coder.index) >= len(a):
      # Many known values (user ids): look the rows up, no dictionary first.
      return self.coder.row_codes(a, self.none)
    enc = a.dictionary_encode()
    if self.coder is not None:
      table = np.append(self.coder.codes(enc.dictionary), self.none)
    elif self.vocabulary is not None:
      table = np.append(frozen_ids(enc.dictionary, self.vocabulary), self.none)
    else:
      table = np.append(hashing.hashed_ids(enc.dictionary.to_pylist(), self.buckets),
                        self.none)
    return table[enc.indices.fill_null(len(table) - 1).to_numpy(zero_copy_only=False)]

  def __call__(self, col) -> np.ndarray:
    """[n, width] int64 codes of a column."""
    a = as_text(col)
    if not self.separator:
      return self._codes(a)[:, None]
    n = len(a)
    lists = pc.split_pattern(a, self.separator)
    counts = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(lists)
    row = np.repeat(np.arange(n), counts)
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    row = row[keep]
    flat = flat.filter(pa.array(keep))
    starts = np.searchsorted(row, np.arange(n))
    slot = np.arange(len(row)) - starts[row]
    self.truncated_rows += int(np.count_nonzero(np.bincount(
        row[slot >= self.max_values], minlength=n)))
    inside = slot < self.max_values
    out = np.full((n, self.max_values), self.none, np.int64)
    out[row[inside], slot[inside]] = self._codes(flat)[inside]
    return out
