"""A lasting index of distinct strings (side-table keys, the values coded so far).

`pyarrow.compute.index_in` builds a hash table of its whole value set at every
call: for a side table of a million users, or the million user ids coded so
far, that costs more than looking up a batch of log rows. `KeyIndex` hashes
its keys once (`string_hashes`: 64 bits of each string's UTF-8 bytes,
computed in numpy from the arrow buffers), keeps the hashes sorted, and finds a
batch's strings by a binary search of their sorted hashes; every hit is then
checked by comparing the two strings, so a string matches a key only when they
are equal. Should two distinct keys share a hash (odds about n²/2⁶⁵), the
index falls back to `index_in` for good.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
# The low b bytes of a little-endian word, b = 0..8.
_LOW_BYTES = np.array([(1 << (8 * b)) - 1 for b in range(9)], np.uint64)


def _mix(z: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer, in place."""
  z ^= z >> np.uint64(30)
  z *= _M2
  z ^= z >> np.uint64(27)
  z *= _M3
  z ^= z >> np.uint64(31)
  return z


def _text(a) -> pa.Array:
  if isinstance(a, pa.ChunkedArray):
    a = a.combine_chunks()
  if not (pa.types.is_string(a.type) or pa.types.is_large_string(a.type)):
    a = pc.cast(a, pa.string())
  return a


def string_hashes(a) -> np.ndarray:
  """A uint64 hash of each string's bytes (a missing value's as the empty
  string's), the same for equal strings in any array."""
  a = _text(a)
  n = len(a)
  if n == 0:
    return np.zeros(0, np.uint64)
  _, offsets_buf, data_buf = a.buffers()
  kind = np.int64 if pa.types.is_large_string(a.type) else np.int32
  offsets = np.frombuffer(offsets_buf, kind, n + 1, a.offset * np.dtype(kind).itemsize
                          ).astype(np.int64)
  first, last = int(offsets[0]), int(offsets[-1])
  start = offsets[:-1] - first
  length = offsets[1:] - offsets[:-1]
  data = np.zeros(last - first + 8, np.uint8)  # 8 bytes past the end: whole words
  if data_buf is not None and last > first:
    data[:last - first] = np.frombuffer(data_buf, np.uint8, last - first, first)
  # Every byte position as the start of a little-endian 8-byte word.
  words = np.ndarray((len(data) - 7,), np.dtype("<u8"), data, 0, (1,))
  h = length.astype(np.uint64) * _M1
  shortest, longest = int(length.min()), int(length.max())
  for j in range(0, longest, 8):
    left = np.clip(length - j, 0, 8)
    w = words[np.minimum(start + j, len(words) - 1)] & _LOW_BYTES[left]
    mixed = _mix(h ^ w)
    h = mixed if j < shortest else np.where(left > 0, mixed, h)
  return h


class KeyIndex:
  """Distinct strings (`keys`, in the order added) and each one's row."""

  def __init__(self, keys: pa.Array | None = None):
    self.keys = pa.array([], pa.string())
    self._hashes = np.zeros(0, np.uint64)  # sorted
    self._rows = np.zeros(0, np.int64)  # the key row of each hash
    self._exact = False  # two keys share a hash: index_in instead
    if keys is not None:
      self.add(keys)

  def __len__(self) -> int:
    return len(self.keys)

  def add(self, new) -> None:
    """Appends keys, distinct and none of them already in the index."""
    new = _text(new).cast(pa.string())
    if not len(new):
      return
    rows = np.arange(len(self.keys), len(self.keys) + len(new), dtype=np.int64)
    self.keys = pa.concat_arrays([self.keys, new]) if len(self.keys) else new
    if self._exact:
      return
    h = string_hashes(new)
    order = np.argsort(h)
    h, rows = h[order], rows[order]
    at = np.searchsorted(self._hashes, h)
    shared = bool(np.any(h[1:] == h[:-1]))
    if len(self._hashes):
      shared |= bool(np.any(self._hashes[np.minimum(at, len(self._hashes) - 1)] == h))
    if shared:
      self._exact = True
      self._hashes = self._rows = None
      return
    self._hashes = np.insert(self._hashes, at, h)
    self._rows = np.insert(self._rows, at, rows)

  def lookup(self, words) -> np.ndarray:
    """The row of each of `words` among the keys (int64), -1 for a word that is
    not a key or is missing."""
    words = _text(words)
    n = len(words)
    if n == 0 or not len(self.keys):
      return np.full(n, -1, np.int64)
    if words.type != self.keys.type:
      words = words.cast(self.keys.type)
    if self._exact or 4 * len(self.keys) < n:  # a small value set: index_in is quicker
      return pc.index_in(words, value_set=self.keys).fill_null(-1).to_numpy(
          zero_copy_only=False).astype(np.int64)
    h = string_hashes(words)
    order = np.argsort(h)  # sorted queries: a cache-friendly binary search
    hs = h[order]
    pos = np.minimum(np.searchsorted(self._hashes, hs), len(self._hashes) - 1)
    hit = self._hashes[pos] == hs
    rows = np.full(n, -1, np.int64)
    rows[order[hit]] = self._rows[pos[hit]]
    # Equal hashes, so the only key the word can equal: compare the strings.
    cand = np.flatnonzero(rows >= 0)
    if len(cand) == n:
      same = pc.equal(self.keys.take(pa.array(rows)), words)
    else:
      same = pc.equal(self.keys.take(pa.array(rows[cand])), words.take(pa.array(cand)))
    same = same.fill_null(False).to_numpy(zero_copy_only=False)
    rows[cand[~same]] = -1
    return rows
