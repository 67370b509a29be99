"""Delimited raw text (CSV, TSV, `::`-separated) read in blocks of whole lines,
every value checked.

`read_blocks` parses a member of a `RawSource` block by block with pyarrow, so
no file is ever held whole; a value that does not parse is reported with its
file, line and column. The column helpers turn a parsed block into numpy
columns, refusing missing, non-finite or out-of-range values the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from m3oe_jax.data.raw import RawDataError
from m3oe_jax.data.raw.sources import RawSource

# Raw code of a missing value of an integer-valued sparse feature.
MISSING = np.iinfo(np.int64).min
# Largest time value accepted: far beyond any unix time in ms, and it keeps the
# split's arithmetic on times inside int64.
MAX_TIME = 2**62
READ_BLOCK_BYTES = 1 << 24  # raw text read per parse call


@dataclasses.dataclass
class TextFormat:
  delimiter: str = ","
  header: bool = True
  column_names: tuple[str, ...] = ()  # for files without a header
  encoding: str = "utf8"
  quote: bool = True
  multi_char_delimiter: bytes = b""  # replaced by `delimiter` before parsing


def _check_encoding(head: bytes, where: str, encoding: str) -> None:
  if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head[:65536]:
    raise RawDataError(
        f"{where}: unreadable encoding: the file holds NUL bytes or a UTF-16 "
        f"byte-order mark, but must be {encoding} text")


def iter_line_blocks(f, where: str, block_bytes: int, encoding: str
                     ) -> Iterator[tuple[int, bytes]]:
  """Yields (number of lines before the block, block of whole lines)."""
  carry = b""
  lines_before = 0
  first = True
  while True:
    data = f.read(block_bytes)
    if first:
      _check_encoding(data, where, encoding)
      first = False
    if not data:
      if carry.strip():
        yield lines_before, carry
      return
    data = carry + data
    cut = data.rfind(b"\n")
    if cut < 0:
      carry = data
      continue
    block, carry = data[:cut + 1], data[cut + 1:]
    yield lines_before, block
    lines_before += block.count(b"\n")


def _header_names(first_line: bytes, where: str, fmt: TextFormat) -> list[str]:
  try:
    text = first_line.decode(fmt.encoding)
  except UnicodeDecodeError as e:
    raise RawDataError(f"{where}, line 1: unreadable encoding in the header ({e})") from e
  names = next(csv.reader([text.strip("\r\n")], delimiter=fmt.delimiter))
  return [n.strip().lstrip("\ufeff") for n in names]


def _locate_bad_line(block: bytes, fmt: TextFormat, names: Sequence[str],
                     message: str) -> tuple[int | None, str | None, str | None]:
  """Finds (line offset in block, column, value) of the error pyarrow reported."""
  text_lines = block.split(b"\n")
  m = re.search(r"column #(\d+)", message)
  col_index = int(m.group(1)) if m else None
  col_name = names[col_index] if col_index is not None and col_index < len(names) else None
  m = re.search(r"Row #(\d+)", message)
  if m:  # pyarrow named the row (1-based within the block)
    offset = int(m.group(1)) - 1
    raw = text_lines[offset] if offset < len(text_lines) else b""
    return offset, col_name, raw.decode(fmt.encoding, errors="replace")[:80]
  numeric = re.search(r"conversion error to (u?int\d*|double|float)", message)
  for i, raw in enumerate(text_lines):
    if not raw.strip():
      continue
    try:
      line = raw.decode(fmt.encoding)
    except UnicodeDecodeError:
      return i, col_name, raw.decode(fmt.encoding, errors="replace")[:80]
    fields = next(csv.reader([line.rstrip("\r")], delimiter=fmt.delimiter,
                             quoting=csv.QUOTE_MINIMAL if fmt.quote else csv.QUOTE_NONE))
    if len(fields) != len(names):
      return i, None, line[:80]
    if col_index is not None and numeric:
      value = fields[col_index]
      try:
        if value != "":
          int(value) if "int" in numeric.group(1) else float(value)
      except ValueError:
        return i, col_name, value
  return None, col_name, None


def read_blocks(source: RawSource, member: str, fmt: TextFormat,
                columns: Mapping[str, pa.DataType], *, block_bytes: int | None = None,
                line_hashes: bool = False) -> Iterator[tuple]:
  """Yields (file line number of the block's first row, table of `columns`).

  Every requested column must exist (a clear error lists the missing ones);
  values are converted to the requested types, and a value that does not
  convert is reported with its file, line and column. With `line_hashes`,
  each tuple also holds a 64-bit hash of every row's whole line (equal lines,
  equal hashes), for counting exact duplicate rows.
  """
  where = source.display(member)
  with source.open(member) as f:
    blocks = iter_line_blocks(f, where, block_bytes or READ_BLOCK_BYTES, fmt.encoding)
    if fmt.header:
      try:
        _, first = next(blocks)
      except StopIteration:
        raise RawDataError(f"{where}: the file is empty (no header line)") from None
      nl = first.find(b"\n")
      header_line, rest = (first, b"") if nl < 0 else (first[:nl + 1], first[nl + 1:])
      names = _header_names(header_line, where, fmt)
      blocks = _chain_first(((1, rest),) if rest.strip() else (), blocks)
    else:
      names = list(fmt.column_names)
    missing = [c for c in columns if c not in names]
    if missing:
      raise RawDataError(
          f"{where}: missing column(s) {missing}; the file has columns {names}")
    convert = pa_csv.ConvertOptions(
        column_types=dict(columns), include_columns=list(columns),
        strings_can_be_null=False, check_utf8=True)
    parse_opts = pa_csv.ParseOptions(delimiter=fmt.delimiter,
                                     quote_char='"' if fmt.quote else False)
    for lines_before, block in blocks:
      if fmt.multi_char_delimiter:
        block = block.replace(fmt.multi_char_delimiter, fmt.delimiter.encode())
      # One pyarrow block per call, so that the row numbers it reports count
      # from the start of `block`.
      read_opts = pa_csv.ReadOptions(column_names=names, use_threads=False,
                                     encoding=fmt.encoding,
                                     block_size=max(len(block) + 1, 1 << 16))
      try:
        table = pa_csv.read_csv(io.BytesIO(block), read_options=read_opts,
                                parse_options=parse_opts, convert_options=convert)
      except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise _parse_error(e, block, fmt, names, where, lines_before) from e
      if not line_hashes:
        yield lines_before + 1, table
        continue
      rows = [l.rstrip(b"\r") for l in block.split(b"\n")]
      hashes = np.fromiter((hash(l) for l in rows if l), np.int64, count=-1)
      if len(hashes) != table.num_rows:
        raise RawDataError(
            f"{where}, lines {lines_before + 1}..{lines_before + len(rows)}: "
            f"{table.num_rows} rows in {len(hashes)} lines (blank or quoted line "
            "breaks inside a row?); this file must hold one row per line")
      yield lines_before + 1, table, hashes


def _parse_error(e: Exception, block: bytes, fmt: TextFormat, names: Sequence[str],
                 where: str, lines_before: int) -> RawDataError:
  msg = str(e)
  offset, col, text = _locate_bad_line(block, fmt, names, msg)
  if text is not None and fmt.multi_char_delimiter:
    text = text.replace(fmt.delimiter, fmt.multi_char_delimiter.decode(fmt.encoding))
  line = f", line {lines_before + offset + 1}" if offset is not None else ""
  col_s = f", column {col!r}" if col else ""
  m = re.search(r"Expected (\d+) columns, got (\d+)", msg)
  bad_value = re.search(r"invalid value '([^']*)'", msg)
  if "UTF8" in msg or "utf8" in msg.lower() or "decode" in msg.lower():
    kind = f"unreadable encoding (not valid {fmt.encoding})"
  elif m:
    kind = (f"wrong number of fields, {m.group(2)} instead of {m.group(1)} (truncated "
            "file or malformed row)")
  elif "conversion error" in msg:
    kind = "not a number" if bad_value else "cannot convert the value"
    if bad_value:
      kind += f": {bad_value.group(1)!r}"
  else:
    kind = msg
  row = f"; the row reads {text!r}" if text is not None else ""
  return RawDataError(f"{where}{line}{col_s}: {kind}{row}")


def _chain_first(first: Iterable[tuple[int, bytes]], rest: Iterator[tuple[int, bytes]]
                 ) -> Iterator[tuple[int, bytes]]:
  yield from first
  yield from rest


def column_int(table: pa.Table, name: str, where: str, first_line: int, *,
               allow_missing: bool = False) -> np.ndarray:
  """An integer column as int64; missing values are an error unless allowed."""
  col = table.column(name)
  if col.null_count:
    if not allow_missing:
      bad = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
      raise RawDataError(f"{where}, line {first_line + bad}, column {name!r}: "
                         "missing value")
    return col.fill_null(MISSING).to_numpy().astype(np.int64)
  return col.to_numpy().astype(np.int64)


def column_float(table: pa.Table, name: str, where: str, first_line: int, *,
                 check_finite: bool) -> np.ndarray:
  col = table.column(name)
  values = col.to_numpy(zero_copy_only=False).astype(np.float64)
  if check_finite:
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
      raise RawDataError(
          f"{where}, line {first_line + int(bad[0])}, column {name!r}: dense value "
          f"{values[bad[0]]} is missing, NaN or infinite")
  return values


def float_codes(table: pa.Table, name: str, where: str, first_line: int) -> np.ndarray:
  """A categorical column written as numbers (possibly with gaps) as int64 codes."""
  values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
  finite = np.isfinite(values)
  if np.any(finite & (values != np.round(values))):
    bad = int(np.flatnonzero(finite & (values != np.round(values)))[0])
    raise RawDataError(f"{where}, line {first_line + bad}, column {name!r}: "
                       f"categorical value {values[bad]} is not an integer")
  huge = np.flatnonzero(finite & (np.abs(values) > 2.0**53))
  if len(huge):
    bad = int(huge[0])
    raise RawDataError(f"{where}, line {first_line + bad}, column {name!r}: "
                       f"categorical value {values[bad]} is too large to be an exact "
                       "integer code (beyond 2**53); fix the value or leave it empty")
  out = np.full(values.shape, MISSING, np.int64)
  out[finite] = values[finite].astype(np.int64)
  return out


def check_range(values: np.ndarray, lo: int, hi: int, name: str, where: str,
                lines: np.ndarray | int, what: str) -> None:
  """Refuses values outside [lo, hi], naming the first one's line and column.

  `lines` is the file line of every value, or of the first one.
  """
  bad = np.flatnonzero((values < lo) | (values > hi))
  if len(bad):
    i = int(bad[0])
    line = int(lines[i]) if isinstance(lines, np.ndarray) else lines + i
    raise RawDataError(f"{where}, line {line}, column {name!r}: {int(values[i])} is "
                       f"outside {lo}..{hi} ({what}); fix or remove the row "
                       f"({len(bad)} such value(s) in this block)")
