"""Where preparation keeps rows: spill files while it works, and the columnar
`.npy` files of a prepared folder.

`Spill` appends fixed-width columns to flat files in a scratch folder;
`FlatColumn` reads such a file (or an `.npy` file, `npy_column`) by explicit
reads, so the pages read do not count against the process's resident memory.
`NpyWriter` writes an `.npy` file row block by row block, keeping its size and
CRC-32. The names below are the layout of a prepared folder:

  <folder>/m3oe_schema.json                            the FeatureSchema, with provenance
  <folder>/columnar/<split>/{sparse,dense,domain,labels}.npy   what training reads
  <folder>/vocab/<feature>.npy                         raw values; id i + 1 is values[i]
"""

from __future__ import annotations

import io
import os
import zlib
from typing import Any, Iterator, Mapping

import numpy as np

COLUMNAR_DIR = "columnar"
VOCAB_DIR = "vocab"
# The prepared folder's feature schema (export writes a different `schema.json`).
PREPARED_SCHEMA_FILE = "m3oe_schema.json"


def row_slices(n: int, size: int) -> Iterator[slice]:
  """Consecutive slices of at most `size` rows covering rows 0..n-1."""
  for start in range(0, n, size):
    yield slice(start, min(start + size, n))


class Spill:
  """Append-only flat files of fixed-width columns.

  An int64 column named in `narrow` is written as int32 while its values fit
  (the codes and ids of sparse features nearly always do: half the bytes to
  write and to read back); should a block not fit, the file so far is widened
  to int64 once. Its readers get the type it was stored in.
  """

  def __init__(self, directory: str, layout: Mapping[str, tuple[np.dtype, int]],
               narrow: tuple[str, ...] = ()):
    self.dir = directory
    self.layout = {k: (np.dtype(d), w) for k, (d, w) in layout.items()}
    self.stored = {k: np.dtype(np.int32) if k in narrow and d == np.int64 else d
                   for k, (d, _) in self.layout.items()}
    self.files = {k: open(self._path(k), "wb") for k in layout}
    self.rows = 0

  def _path(self, k: str) -> str:
    return os.path.join(self.dir, k + ".bin")

  def append(self, columns: Mapping[str, np.ndarray]) -> None:
    n = None
    for k, (dtype, width) in self.layout.items():
      a = np.asarray(columns[k])
      rows = a.shape[0]
      assert a.size == rows * width, (k, a.shape, width)
      n = rows if n is None else n
      assert rows == n
      if (self.stored[k] != dtype and a.size and not np.can_cast(a.dtype, self.stored[k])
          and not _fits(a, self.stored[k])):
        self._widen(k)
      write(self.files[k], np.ascontiguousarray(a, self.stored[k]))
    self.rows += n or 0

  def _widen(self, k: str) -> None:
    """Rewrites column k's file so far in its declared type."""
    self.files[k].close()
    narrow, wide = self.stored[k], self.layout[k][0]
    os.replace(self._path(k), self._path(k) + ".narrow")
    self.files[k] = open(self._path(k), "wb")
    with open(self._path(k) + ".narrow", "rb") as f:
      while True:
        block = np.fromfile(f, narrow, count=1 << 22)
        if not block.size:
          break
        write(self.files[k], block.astype(wide))
    os.remove(self._path(k) + ".narrow")
    self.stored[k] = wide

  def close(self) -> dict[str, "FlatColumn"]:
    for f in self.files.values():
      f.close()
    return {k: FlatColumn(self._path(k), self.stored[k], width, self.rows,
                          two_d=k in ("labels", "sparse", "dense"))
            for k, (_, width) in self.layout.items()}


def _fits(a: np.ndarray, dtype: np.dtype) -> bool:
  info = np.iinfo(dtype)
  return info.min <= int(a.min()) and int(a.max()) <= info.max


def write(f, a: np.ndarray) -> int:
  """Writes a C-contiguous array's bytes without copying them; their number."""
  view = memoryview(a).cast("B") if a.size else b""
  f.write(view)
  return len(view)


class FlatColumn:
  """A column in a flat binary file, read by explicit reads (not memory-mapped,
  so the pages read do not count against the process's resident memory)."""

  def __init__(self, path: str, dtype, width: int, rows: int, offset: int = 0,
               two_d: bool = True):
    self.path, self.dtype, self.width, self.rows = path, np.dtype(dtype), width, rows
    self.offset = offset
    self.two_d = two_d
    self.shape = (rows, width) if two_d else (rows,)

  def __len__(self) -> int:
    return self.rows

  def _read(self, start: int, stop: int) -> np.ndarray:
    n = max(stop - start, 0)
    shape = (n, self.width) if self.two_d else (n,)
    if n == 0 or self.width == 0:
      return np.zeros(shape, self.dtype)
    with open(self.path, "rb") as f:
      f.seek(self.offset + start * self.width * self.dtype.itemsize)
      data = np.fromfile(f, self.dtype, count=n * self.width)
    if data.size != n * self.width:
      raise IOError(f"{self.path}: short read")
    return data.reshape(shape)

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, slice):
      start, stop, step = key.indices(self.rows)
      assert step == 1
      return self._read(start, stop)
    idx = np.asarray(key)
    out = np.empty((len(idx),) + self.shape[1:], self.dtype)
    if not len(idx):
      return out
    order = np.argsort(idx, kind="stable")
    sidx = idx[order]
    step = 1 << 20
    start = 0
    while start < len(sidx):
      lo = int(sidx[start])
      hi = min(lo + step, self.rows)
      end = int(np.searchsorted(sidx, hi, side="left"))
      block = self._read(lo, hi)
      out[order[start:end]] = block[sidx[start:end] - lo]
      start = end
    return out


def read_npy_header(path: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
  """(shape, Fortran order, dtype, offset of the data) of a `.npy` file."""
  with open(path, "rb") as f:
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(f)
    return shape, fortran, dtype, f.tell()


def npy_column(path: str) -> FlatColumn:
  """A `.npy` file as a FlatColumn (2-D arrays keep their width)."""
  shape, fortran, dtype, offset = read_npy_header(path)
  assert not fortran
  width = shape[1] if len(shape) == 2 else 1
  return FlatColumn(path, dtype, width, shape[0], offset, two_d=len(shape) == 2)


class NpyWriter:
  """Writes a `.npy` file of known shape by appending rows (no memory map),
  keeping its size and CRC-32 (`record()`)."""

  def __init__(self, path: str, dtype, shape: tuple[int, ...]):
    self.f = open(path, "wb")
    self.dtype, self.shape, self.rows = np.dtype(dtype), tuple(shape), 0
    self.crc, self.bytes = 0, 0
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                 "fortran_order": False, "shape": self.shape})
    self._write(header.getvalue())

  def _write(self, data: bytes) -> None:
    self.f.write(data)
    self.crc = zlib.crc32(data, self.crc)
    self.bytes += len(data)

  def append(self, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a, self.dtype)
    self._write(memoryview(a).cast("B") if a.size else b"")
    self.rows += a.shape[0]

  def record(self) -> dict[str, Any]:
    return {"bytes": self.bytes, "crc32": f"{self.crc:08x}"}

  def close(self) -> None:
    self.f.close()
    assert self.rows == self.shape[0], (self.rows, self.shape)


def load_columnar(split_dir: str, mmap: bool) -> dict[str, np.ndarray]:
  return {k: np.load(os.path.join(split_dir, k + ".npy"), mmap_mode="r" if mmap else None)
          for k in ("sparse", "dense", "domain", "labels")}
