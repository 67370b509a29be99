"""Checks of prepared data before it trains: a damaged file is named, in one line.

Preparation records every columnar file's size and CRC-32 in the schema
(`source.prepared_files`). Loading then checks, on every start:
  * `dataset_info.json` and `m3oe_schema.json` exist and parse;
  * every columnar `.npy` file exists, its header holds the dtype and shape the
    schema implies (rows per split, features, tasks), and its size is exactly
    that header plus the array (a truncated or padded file is refused);
  * the values: ids in [0, vocabulary size) per sparse feature, domains in
    [0, number of domains), labels in {0, 1}, finite dense values. Where the
    whole split is read into memory anyway (placements 'host' and 'device') this
    is one vectorised pass at load; where it streams from disk ('stream'), every
    gathered batch is checked before it is used, so no second pass over the
    data is made.
`verify` (`python -m m3oe_jax.data.prepared --config=... --verify`) also
compares every file's CRC-32 with the recorded one, which finds changes that
keep values in range.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from typing import Any, Callable, Mapping

import numpy as np

from m3oe_jax.data.raw.storage import read_npy_header
from m3oe_jax.data.schema import BATCH_KEYS, FeatureSchema
from m3oe_jax.errors import UserError

DATASET_INFO = "dataset_info.json"
CHECK_ROWS = 1 << 18  # rows per block of a whole-split check
CRC_BLOCK_BYTES = 1 << 24


class PreparedDataError(UserError, ValueError):
  """A prepared file is missing or damaged; the message names it and says how to
  prepare again."""


def damaged(path: str, problem: str, folder: str) -> PreparedDataError:
  return PreparedDataError(
      f"{path}: {problem}; the prepared data in {folder} is damaged: delete that folder "
      "and run again to prepare it anew from the raw data")


def describe_error(e: BaseException, limit: int = 200) -> str:
  return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}"


def read_json(path: str, folder: str) -> Any:
  try:
    with open(path, "rb") as f:
      return json.loads(f.read())
  except FileNotFoundError:
    raise damaged(path, "missing", folder) from None
  except (OSError, ValueError) as e:
    raise damaged(path, f"unreadable ({describe_error(e)})", folder) from None


def read_schema(path: str, folder: str) -> FeatureSchema:
  d = read_json(path, folder)
  try:
    return FeatureSchema.from_dict(d)
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise damaged(path, f"not a feature schema ({describe_error(e)})", folder) from None


def expected_columns(schema: FeatureSchema, rows: int) -> dict[str, tuple[np.dtype, tuple]]:
  """dtype and shape of each columnar file of a split of `rows` rows."""
  return {"sparse": (np.dtype(np.int32), (rows, schema.sparse_width)),
          "dense": (np.dtype(np.float32), (rows, schema.num_dense)),
          "domain": (np.dtype(np.int32), (rows,)),
          "labels": (np.dtype(np.float32), (rows, schema.num_tasks))}


def check_npy(path: str, dtype: np.dtype, shape: tuple, folder: str) -> None:
  """Refuses a missing `.npy` file, an unreadable header, another dtype or shape,
  or a size that is not the header plus the array."""
  try:
    got_shape, fortran, got_dtype, offset = read_npy_header(path)
  except FileNotFoundError:
    raise damaged(path, "missing", folder) from None
  except (OSError, ValueError, SyntaxError) as e:
    raise damaged(path, f"not a readable .npy file ({describe_error(e)})", folder) from None
  if got_dtype != dtype or tuple(got_shape) != tuple(shape) or fortran:
    raise damaged(path, f"holds a {'Fortran-order ' if fortran else ''}{got_dtype} array "
                  f"of shape {tuple(got_shape)}, expected {dtype} {tuple(shape)} (from "
                  "the schema)", folder)
  size = os.path.getsize(path)
  want = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if size != want:
    raise damaged(path, f"{size:,} bytes instead of {want:,} "
                  f"({'truncated' if size < want else 'bytes after the array'})", folder)


def check_split_files(split_dir: str, schema: FeatureSchema, rows: int,
                      folder: str) -> None:
  for key, (dtype, shape) in expected_columns(schema, rows).items():
    check_npy(os.path.join(split_dir, key + ".npy"), dtype, shape, folder)


def check_values(columns: Mapping[str, np.ndarray], schema: FeatureSchema,
                 where: Callable[[str], str], folder: str,
                 rows: np.ndarray | None = None) -> None:
  """Refuses ids outside their feature's vocabulary, domains outside the
  schema's, labels other than 0 and 1, and non-finite dense values.

  `where(key)` names the file of a column; `rows` are the file rows of the
  columns' rows (default 0, 1, ...). Whole columns are checked in blocks of
  CHECK_ROWS rows.
  """
  n = len(columns["domain"])
  vocab = np.repeat(np.asarray(schema.vocab_sizes, np.uint32), schema.widths)
  column_names = schema.sparse_columns
  for start in range(0, n, CHECK_ROWS):
    block = slice(start, min(start + CHECK_ROWS, n))
    row = lambda i: int(rows[block][i]) if rows is not None else block.start + int(i)
    if schema.num_sparse:
      ids = np.asarray(columns["sparse"][block])
      # As unsigned, a negative id is huge, so one maximum checks both ends.
      over = np.flatnonzero(ids.view(np.uint32).max(axis=0) >= vocab)
      if len(over):
        j = int(over[0])
        i = int(np.flatnonzero(ids[:, j].view(np.uint32) >= vocab[j])[0])
        raise damaged(where("sparse"), f"row {row(i)}, feature "
                      f"{column_names[j]!r}: id {int(ids[i, j])} is outside its "
                      f"vocabulary 0..{int(vocab[j]) - 1}", folder)
    domain = np.asarray(columns["domain"][block])
    if len(domain) and domain.view(np.uint32).max() >= schema.num_domains:
      i = int(np.flatnonzero(domain.view(np.uint32) >= schema.num_domains)[0])
      raise damaged(where("domain"), f"row {row(i)}: domain {int(domain[i])} is outside "
                    f"0..{schema.num_domains - 1}", folder)
    labels = np.asarray(columns["labels"][block])
    bad = (labels != 0) & (labels != 1)
    if bad.any():
      i, t = (int(x[0]) for x in np.nonzero(bad))
      raise damaged(where("labels"), f"row {row(i)}, task {schema.task_names[t]!r}: "
                    f"label {labels[i, t]} is not 0 or 1", folder)
    if schema.num_dense:
      dense = np.asarray(columns["dense"][block])
      bad = ~np.isfinite(dense)
      if bad.any():
        i, q = (int(x[0]) for x in np.nonzero(bad))
        raise damaged(where("dense"), f"row {row(i)}, feature {schema.dense_names[q]!r}: "
                      f"dense value {dense[i, q]} is not finite", folder)


def file_crc32(path: str) -> tuple[int, str]:
  """(size, CRC-32 as 8 hex digits) of a file."""
  crc, size = 0, 0
  with open(path, "rb") as f:
    while block := f.read(CRC_BLOCK_BYTES):
      crc = zlib.crc32(block, crc)
      size += len(block)
  return size, f"{crc:08x}"


def verify(folder: str, schema: FeatureSchema, splits: tuple[str, ...],
           columnar_dir: str) -> str:
  """Every check of loading over every split, plus each file's size and CRC-32
  against the ones recorded at preparation; returns a one-line summary."""
  start = time.perf_counter()
  files = schema.source.get("prepared_files") or {}
  num_rows = schema.source.get("num_rows", {})
  checked, total_bytes = 0, 0
  for split in splits:
    split_dir = os.path.join(folder, columnar_dir, split)
    check_split_files(split_dir, schema, num_rows[split], folder)
    columns = {k: np.load(os.path.join(split_dir, k + ".npy"), mmap_mode="r")
               for k in BATCH_KEYS}
    check_values(columns, schema, lambda k: os.path.join(split_dir, k + ".npy"), folder)
    for key in BATCH_KEYS:
      name = f"{columnar_dir}/{split}/{key}.npy"
      record = files.get(name)
      if record is None:
        continue
      path = os.path.join(folder, name)
      size, crc = file_crc32(path)
      if (size, crc) != (record["bytes"], record["crc32"]):
        raise damaged(path, f"CRC-32 {crc} over {size:,} bytes, but preparation recorded "
                      f"{record['crc32']} over {record['bytes']:,} bytes", folder)
      checked += 1
      total_bytes += size
  seconds = time.perf_counter() - start
  rows = sum(num_rows[s] for s in splits)
  crcs = (f"{checked} files' CRC-32 match ({total_bytes / 1e6:,.1f} MB)" if files else
          "no CRC-32 recorded (prepared by an earlier version): contents unverified "
          "beyond shapes, sizes and value ranges")
  return (f"verified {folder}: {rows:,} rows, shapes, sizes and value ranges ok; {crcs}; "
          f"{seconds:.1f} s")
