"""Side tables of a files dataset: read whole into memory, joined to log rows by key.

A side table (e.g. users, items) is read once: its key (one or several
columns, joined into one text key) must be present and unique, and the columns
it adds are converted by their role at once (categorical codes, dense values),
so a bad value is refused naming the side table's file and row. A log batch
then finds each row's table row with one vectorised look-up in
the table's lasting key index (`key_index.KeyIndex`) and gathers the converted columns; a row without a
match gets no value (the OOV id, a missing dense value that becomes 0), and is
counted.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from m3oe_jax.data.raw import RawDataError, roles, tables
from m3oe_jax.data.raw.declaration import SideTable
from m3oe_jax.data.raw.key_index import KeyIndex

KEY_SEPARATOR = "\x1f"


def joined_key(table: pa.Table, columns: Sequence[str]) -> pa.Array:
  """The text key of each row (several columns joined by KEY_SEPARATOR);
  missing when any part is."""
  parts = [roles.as_text(table.column(c)) for c in columns]
  if len(parts) == 1:
    return parts[0]
  return pc.binary_join_element_wise(*parts, KEY_SEPARATOR)


@dataclasses.dataclass
class LoadedTable:
  spec: SideTable
  keys: pa.Array  # text, unique
  columns: dict[str, np.ndarray]  # converted, one row per key
  files: list[str]
  unmatched_rows: int = 0
  rows_seen: int = 0
  index: KeyIndex | None = None

  def join(self, log: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(row of this table for each log row, whether it matched)."""
    if self.index is None:
      self.index = KeyIndex(self.keys)
    rows = self.index.lookup(joined_key(log, self.spec.log_key))
    found = rows >= 0
    rows[~found] = 0
    self.rows_seen += len(rows)
    self.unmatched_rows += int(len(rows) - np.count_nonzero(found))
    return rows, found


# column name -> (converts a column of a batch at a Place, value of "no value")
Converter = Callable[[pa.ChunkedArray, str, roles.Place], np.ndarray]


def load(spec: SideTable, convert: Mapping[str, Converter], chunk_rows: int) -> LoadedTable:
  """Reads every file of a side table, checks its key, converts its columns."""
  files = tables.expand(spec.path, f"config.data.files.side_tables[{spec.name}].path")
  wanted = list(dict.fromkeys(list(spec.key) + list(spec.columns)))
  keys, columns, places = [], {c: [] for c in spec.columns}, []
  for path in files:
    head = tables.header(path, spec.format)
    missing = [c for c in wanted if c not in head.names]
    if missing:
      raise RawDataError(f"{path}, column {missing[0]!r}: missing from side table "
                         f"{spec.name!r} (its columns: {list(head.names)})")
    tables.refuse_nested(path, head, wanted)
    for first, batch in tables.batches(path, spec.format, wanted, chunk_rows):
      place = roles.Place(path, first, head.text)
      key = joined_key(batch, spec.key)
      if key.null_count:
        i = int(np.flatnonzero(key.is_null().to_numpy(zero_copy_only=False))[0])
        column = next(c for c in spec.key if not batch.column(c)[i].is_valid
                      or batch.column(c)[i].as_py() == "")
        raise RawDataError(f"{place.at(i, column)}: missing key of side table "
                           f"{spec.name!r}")
      keys.append(key)
      places.append((place, batch.num_rows))
      for c in spec.columns:
        columns[c].append(convert[c](batch.column(c), c, place))
  key = pa.concat_arrays(keys) if keys else pa.array([], pa.string())
  _refuse_duplicates(key, places, spec)
  return LoadedTable(spec, key, {c: np.concatenate(v) if v else np.zeros(0)
                                 for c, v in columns.items()}, files)


def _refuse_duplicates(key: pa.Array, places: list[tuple[roles.Place, int]],
                       spec: SideTable) -> None:
  enc = key.dictionary_encode()
  if len(enc.dictionary) == len(key):
    return
  indices = enc.indices.to_numpy(zero_copy_only=False)
  _, first = np.unique(indices, return_index=True)
  repeated = np.ones(len(key), bool)
  repeated[first] = False
  i = int(np.flatnonzero(repeated)[0])
  for place, rows in places:
    if i < rows:
      column = spec.key[0] if len(spec.key) == 1 else list(spec.key)
      raise RawDataError(f"{tables.where(place.path, place.first_row + i, place.text)}, "
                         f"column {column!r}: key {key[i].as_py()!r} is in side table "
                         f"{spec.name!r} twice")
    i -= rows
