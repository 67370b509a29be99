"""The three splits of prepared rows, with exact sizes from the configured ratios.

  temporal    by time, then user, then item, then file order; the cut points are
              found by exact selection over the spilled time column, so the
              whole data set is never sorted;
  random      a seeded permutation;
  file_order  consecutive ranges in file order (the reference code's slicing);
  given       each row's split as the input gives it (a column, or files per split).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from m3oe_jax.data.pipeline import SPLITS
from m3oe_jax.data.raw import RawDataError
from m3oe_jax.data.raw.settings import SPLIT_KINDS
from m3oe_jax.data.raw.storage import row_slices


def split_sizes(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
  if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
    raise ValueError(f"split_ratios must be three non-negative numbers, got {ratios}")
  total = float(sum(ratios))
  n_train = int(n * ratios[0] / total)
  n_val = int(n * ratios[1] / total)
  return n_train, n_val, n - n_train - n_val


def _kth_smallest(values: np.ndarray, k: int, chunk: int) -> int:
  """Exact k-th smallest (0-based) of an int64 array read in chunks."""
  lo = min(int(values[s].min()) for s in row_slices(len(values), chunk))
  hi = max(int(values[s].max()) for s in row_slices(len(values), chunk))
  below = 0  # values < lo
  while True:
    if hi - lo < 1024:
      edges = np.arange(lo, hi + 2, dtype=np.int64)
    else:  # integer arithmetic: float edges lose precision on large times
      width = -(-(hi - lo + 1) // 1024)
      edges = np.array([min(lo + i * width, hi + 1) for i in range(1025)], np.int64)
      edges = np.unique(edges)
    counts = np.zeros(len(edges) - 1, np.int64)
    for s in row_slices(len(values), chunk):
      v = np.asarray(values[s])
      v = v[(v >= lo) & (v <= hi)]
      counts += np.bincount(np.searchsorted(edges, v, side="right") - 1,
                            minlength=len(counts))[:len(counts)]
    cum = np.cumsum(counts)
    b = int(np.searchsorted(cum, k - below, side="right"))
    below += int(cum[b - 1]) if b > 0 else 0
    lo, hi = int(edges[b]), int(edges[b + 1]) - 1
    if lo == hi:
      return lo


def temporal_assignment(time: np.ndarray, user: np.ndarray, item: np.ndarray,
                        sizes: Sequence[int], chunk: int) -> np.ndarray:
  """Split index of every row when rows are ordered by (time, user, item, row).

  No global sort: each cut's time is found by exact selection, and only the
  rows tied at that time are sorted.
  """
  n = len(time)
  part = np.zeros(n, np.uint8)
  cut = 0
  for size in sizes[:-1]:
    cut += size
    if cut >= n:
      break
    t = _kth_smallest(time, cut, chunk)
    below = 0
    tied = []
    for s in row_slices(n, chunk):
      v = np.asarray(time[s])
      part[s] += (v > t)
      below += int(np.count_nonzero(v < t))
      tied.append(np.flatnonzero(v == t) + s.start)
    tied = np.concatenate(tied)
    order = np.lexsort((tied, np.asarray(item[tied]), np.asarray(user[tied])))
    after = tied[order[cut - below:]]
    part[after] += 1
  return part


def random_assignment(n: int, sizes: Sequence[int], seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  perm = np.arange(n, dtype=np.uint32 if n < 2**32 else np.int64)
  rng.shuffle(perm)
  part = np.empty(n, np.uint8)
  start = 0
  for i, size in enumerate(sizes):
    part[perm[start:start + size]] = i
    start += size
  return part



def given_assignment(split: np.ndarray, chunk: int
                     ) -> tuple[tuple[int, int, int], np.ndarray]:
  """The split each row's input gave it; refuses an empty split."""
  part = np.concatenate([np.asarray(split[s]) for s in row_slices(len(split), chunk)]
                        ) if len(split) else np.zeros(0, np.uint8)
  sizes = tuple(int(k) for k in np.bincount(part, minlength=3)[:3])
  empty = [s for s, k in zip(SPLITS, sizes) if k == 0]
  if empty:
    raise RawDataError(f"split {empty} would be empty: the input gives the splits "
                       f"{dict(zip(SPLITS, sizes))} rows")
  return sizes, part


def assign_splits(kind: str, ratios: Sequence[float], seed: int,
                  rows: Mapping[str, np.ndarray], chunk: int
                  ) -> tuple[tuple[int, int, int], np.ndarray]:
  """The sizes of the train, validation and test splits of the spilled `rows`
  (columns `time`, `user`, `item`) and the split index of every row; refuses
  ratios that leave a split empty."""
  if kind == "given":
    return given_assignment(rows["split"], chunk)
  n = len(rows["time"])
  sizes = split_sizes(n, ratios)
  empty = [s for s, k in zip(SPLITS, sizes) if k == 0]
  if empty:
    raise RawDataError(
        f"split {empty} would be empty: {n} rows with ratios "
        f"{list(ratios)} give sizes {dict(zip(SPLITS, sizes))}")
  if kind == "temporal":
    part = temporal_assignment(rows["time"], rows["user"], rows["item"], sizes, chunk)
  elif kind == "random":
    part = random_assignment(n, sizes, seed)
  elif kind == "file_order":  # the reference code's slicing of its file
    part = np.repeat(np.arange(3, dtype=np.uint8), sizes)
  else:
    raise ValueError(f"split must be one of {SPLIT_KINDS + ('given',)}, got {kind!r}")
  return sizes, part
