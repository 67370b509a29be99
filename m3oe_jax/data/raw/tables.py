"""Files of a files dataset: globs, formats, headers, and reading in record batches.

CSV, TSV (either gzip-compressed: `.gz`) and Parquet are read with pyarrow,
from local paths or anything `etils.epath` opens (gs:// included), one record
batch at a time, so no file is held whole. CSV and TSV columns are read as
text (the roles convert them, naming the row of a value that does not); Parquet
columns keep their types. Rows are numbered from 1 in each file, the header
not counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob as local_glob
import os
import re
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from m3oe_jax import paths
from m3oe_jax.data.raw import RawDataError, RawSourceNotFoundError

CSV_BLOCK_BYTES = 1 << 25
_WILDCARD = re.compile(r"[*?\[]")


def expand(pattern: str, field: str) -> list[str]:
  """The files a glob (or a single path) names, sorted; none is an error naming
  the config field."""
  if paths.is_url(pattern):
    from etils import epath  # pylint: disable=g-import-not-at-top
    parts = pattern.split("/")
    fixed = next((i for i, p in enumerate(parts) if _WILDCARD.search(p)), len(parts))
    root = epath.Path("/".join(parts[:fixed]))
    if fixed == len(parts):
      found = [os.fspath(root)] if root.exists() else []
    else:
      found = [os.fspath(p) for p in root.glob("/".join(parts[fixed:]))]
  else:
    found = [p for p in local_glob.glob(os.path.expanduser(pattern), recursive=True)
             if os.path.isfile(p)]
  if not found:
    raise RawSourceNotFoundError(f"{field}={pattern!r}: no file matches")
  return sorted(found)


def file_format(path: str, declared: str) -> tuple[str, bool]:
  """('csv' | 'tsv' | 'parquet', gzip-compressed) of a file: as declared, or
  from its name ('auto')."""
  name = os.path.basename(path).lower()
  gz = name.endswith(".gz")
  stem = name[:-3] if gz else name
  if declared != "auto":
    return declared, gz
  for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".txt", "tsv"),
                      (".parquet", "parquet"), (".pq", "parquet")):
    if stem.endswith(suffix):
      return fmt, gz
  raise RawDataError(f"{path}: cannot tell the format from the name (.csv, .tsv, "
                     ".parquet, optionally .gz); set the declaration's 'format'")


@contextlib.contextmanager
def _open(path: str, gz: bool):
  if not paths.is_url(path):
    with pa.input_stream(path, compression="gzip" if gz else None) as f:
      yield f
    return
  from etils import epath  # pylint: disable=g-import-not-at-top
  with epath.Path(path).open("rb") as raw:
    stream = pa.PythonFile(raw, mode="r")
    yield pa.CompressedInputStream(stream, "gzip") if gz else stream


def _read_error(path: str, rows_before: int, e: Exception) -> RawDataError:
  message = " ".join(str(e).split())
  return RawDataError(f"{path}, after row {rows_before:,}: cannot read the file "
                      f"({message[:300]})")


@dataclasses.dataclass(frozen=True)
class Header:
  names: tuple[str, ...]
  types: dict[str, pa.DataType]  # text for CSV/TSV, the stored types for Parquet
  text: bool  # CSV/TSV


def _csv_options(fmt: str, columns: Sequence[str] | None, block_bytes: int):
  read = pa_csv.ReadOptions(block_size=block_bytes, use_threads=True)
  parse = pa_csv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
  convert = pa_csv.ConvertOptions(
      column_types={c: pa.string() for c in columns or ()},
      include_columns=list(columns) if columns is not None else None,
      strings_can_be_null=True, quoted_strings_can_be_null=True, check_utf8=True)
  return read, parse, convert


def header(path: str, declared: str) -> Header:
  """The column names (and Parquet types) of a file, read without its rows."""
  fmt, gz = file_format(path, declared)
  try:
    if fmt == "parquet":
      with _open(path, False) as f:
        schema = pq.ParquetFile(f).schema_arrow
      return Header(tuple(schema.names), {n: schema.field(n).type for n in schema.names},
                    False)
    with _open(path, gz) as f:
      read, parse, _ = _csv_options(fmt, None, 1 << 16)
      reader = pa_csv.open_csv(f, read_options=read, parse_options=parse,
                               convert_options=pa_csv.ConvertOptions())
      names = tuple(reader.schema.names)
  except (pa.ArrowException, OSError, ValueError) as e:
    if isinstance(e, FileNotFoundError):
      raise RawSourceNotFoundError(f"{path}: no such file") from None
    raise _read_error(path, 0, e) from None
  return Header(names, {n: pa.string() for n in names}, True)


def refuse_nested(path: str, head: Header, columns: Sequence[str]) -> None:
  """Refuses a Parquet column of a nested type (a list, struct or map), which
  no role reads."""
  for c in columns:
    t = head.types.get(c)
    if t is not None and pa.types.is_nested(t):
      raise RawDataError(f"{path}, column {c!r}: type {t} cannot be read (a number or "
                         "text is expected)")


def batches(path: str, declared: str, columns: Sequence[str], rows: int
            ) -> Iterator[tuple[int, pa.Table]]:
  """(number of the first row, table of `columns`) per record batch of about
  `rows` rows (Parquet) or `CSV_BLOCK_BYTES` of text (CSV, TSV)."""
  fmt, gz = file_format(path, declared)
  done = 0
  with _open(path, gz and fmt != "parquet") as f:
    try:
      if fmt == "parquet":
        reader = pq.ParquetFile(f).iter_batches(batch_size=rows, columns=list(columns))
      else:
        read, parse, convert = _csv_options(fmt, columns, CSV_BLOCK_BYTES)
        reader = pa_csv.open_csv(f, read_options=read, parse_options=parse,
                                 convert_options=convert)
      for batch in reader:
        if batch.num_rows:
          yield done + 1, pa.Table.from_batches([batch])
        done += batch.num_rows
    except (pa.ArrowException, OSError) as e:
      raise _read_error(path, done, e) from None


def is_text(path: str, declared: str) -> bool:
  return file_format(path, declared)[0] != "parquet"


def where(path: str, row: int, text: bool) -> str:
  """A row's place: `file, row R` (and `line L` for text with a header)."""
  return f"{path}, row {row:,}" + (f" (line {row + 1:,})" if text else "")
