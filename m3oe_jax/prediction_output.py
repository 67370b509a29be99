"""The scores file of `m3oe_jax.predict`: Parquet, CSV or TSV by the suffix of
`--output`, written batch by batch to `<output>.partial` and renamed when
complete (a failed run leaves no partial file behind)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from m3oe_jax.errors import ConfigError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}


def output_format(output: str) -> str:
  """'parquet', 'csv' or 'tsv' from the suffix; refuses another suffix, or a
  folder or a path whose folder does not exist."""
  fmt = FORMATS.get(os.path.splitext(output)[1].lower())
  if fmt is None:
    raise ConfigError(f"--output={output}: the suffix picks the format; end it in "
                      f"{', '.join(FORMATS)}")
  folder = os.path.dirname(os.path.abspath(output))
  if os.path.isdir(output) or not os.path.isdir(folder):
    raise ConfigError(f"--output={output}: "
                      + ("is a folder; name a file" if os.path.isdir(output)
                         else f"its folder {folder} does not exist"))
  return fmt


class Writer:
  """Writes the key columns, `domain` and `p_<task>` of each scored batch."""

  def __init__(self, output: str, fmt: str, keys: Sequence[str], tasks: Sequence[str]):
    self.output, self.fmt = output, fmt
    self.keys, self.tasks = list(keys), list(tasks)
    self.partial = output + ".partial"
    self._writer = None
    self._schema = None

  def __enter__(self):
    return self

  def __exit__(self, kind, value, traceback):
    if self._writer is None and kind is None:
      self._open(self._table(pa.table({k: pa.array([], pa.string()) for k in self.keys}),
                             np.zeros(0, str), np.zeros((0, len(self.tasks)), np.float32)))
    if self._writer is not None:
      self._writer.close()
    if kind is None:
      os.replace(self.partial, self.output)
    elif os.path.exists(self.partial):
      os.remove(self.partial)

  def _table(self, batch: pa.Table, domains: np.ndarray, probs: np.ndarray) -> pa.Table:
    columns = {k: batch.column(k) for k in self.keys}
    columns["domain"] = pa.array(domains.astype(str), pa.string())
    for t, task in enumerate(self.tasks):
      columns[f"p_{task}"] = pa.array(probs[:, t], pa.float32())
    return pa.table(columns)

  def _open(self, table: pa.Table) -> None:
    self._schema = table.schema
    if self.fmt == "parquet":
      self._writer = pq.ParquetWriter(self.partial, self._schema)
    else:
      options = pa_csv.WriteOptions(delimiter="\t" if self.fmt == "tsv" else ",")
      self._writer = pa_csv.CSVWriter(self.partial, self._schema, write_options=options)
    self._writer.write_table(table)

  def write(self, batch: pa.Table, domains: np.ndarray, probs: np.ndarray, place) -> None:
    table = self._table(batch, domains, probs)
    if self._writer is None:
      self._open(table)
      return
    try:
      table = table.cast(self._schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
      raise ConfigError(f"{place.path}: its key columns {self.keys} have types "
                        f"{[str(table.schema.field(k).type) for k in self.keys]}, the first "
                        f"file's {[str(self._schema.field(k).type) for k in self.keys]}; "
                        "score files of one format at a time") from None
    self._writer.write_table(table)
