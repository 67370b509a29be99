"""Row sources and the batch streams the trainer reads.

A *row source* is anything with `__len__` and `take(indices) -> dict of arrays`
holding at least `schema.BATCH_KEYS`. Batches are gathered whole (one fancy-index
per column), never decoded one record at a time.

Every stream is a pure function of (seed, position), so a checkpoint only has to
store integers to resume the data exactly where it stopped.

Batches always have the configured size: the last, partial batch of an epoch is
padded and carries `mask` (1.0 for real rows, 0.0 for padding), so that no row is
dropped and the step compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Mapping, Protocol

import numpy as np

from m3oe_jax.data.schema import BATCH_KEYS, FeatureSchema

SPLITS = ("train", "validation", "test")


class RowSource(Protocol):

  def __len__(self) -> int:
    ...

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    ...


class ArraySource:
  """Columns held in host memory as numpy arrays, one row per example."""

  def __init__(self, columns: Mapping[str, np.ndarray]):
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
      raise ValueError(f"columns have different lengths: {lengths}")
    self.columns = {
        "sparse": np.asarray(columns["sparse"], np.int32),
        "dense": np.asarray(columns["dense"], np.float32),
        "domain": np.asarray(columns["domain"], np.int32),
        "labels": np.asarray(columns["labels"], np.float32),
        **{k: np.asarray(v) for k, v in columns.items() if k not in BATCH_KEYS},
    }

  def __len__(self) -> int:
    return len(self.columns["domain"])

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: self.columns[k][indices] for k in BATCH_KEYS}


@dataclasses.dataclass
class Dataset:
  """A schema and its splits; `true_probs` holds each split's true label
  probabilities [N, T] when the data's generator knows them (synthetic data)."""
  schema: FeatureSchema
  splits: dict[str, RowSource]
  true_probs: dict[str, np.ndarray] | None = None


def num_batches(num_rows: int, batch_size: int) -> int:
  return -(-num_rows // batch_size)


def _padded_batch(source: RowSource, indices: np.ndarray,
                  batch_size: int) -> dict[str, np.ndarray]:
  batch = source.take(indices)
  n = len(indices)
  mask = np.ones((batch_size,), np.float32)
  if n < batch_size:
    pad = batch_size - n
    batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
             for k, v in batch.items()}
    mask[n:] = 0.0
  batch["mask"] = mask
  return batch


def _local_slice(batch_size: int, process_index: int, process_count: int) -> slice:
  if batch_size % process_count:
    raise ValueError(
        f"batch_size {batch_size} is not divisible by the number of processes "
        f"{process_count}")
  per_process = batch_size // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


@functools.lru_cache(maxsize=2)
def epoch_permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
  """The row order of one epoch; cached, since every batch of the epoch reads it."""
  permutation = np.random.default_rng([seed, epoch]).permutation(num_rows)
  permutation.flags.writeable = False
  return permutation


def shuffled_batch(source: RowSource, batch_size: int, seed: int, position: int,
                   process_index: int = 0,
                   process_count: int = 1) -> dict[str, np.ndarray]:
  """Batch number `position` of an endless shuffled stream over `source`.

  Epoch `e` of the stream visits every row once in the order
  `epoch_permutation(len(source), seed, e)`. Each process gets its own slice of
  the global batch; all slices together are the global batch.
  """
  per_epoch = num_batches(len(source), batch_size)
  epoch, index = divmod(position, per_epoch)
  perm = epoch_permutation(len(source), seed, epoch)
  global_rows = perm[index * batch_size:(index + 1) * batch_size]
  local = _local_slice(batch_size, process_index, process_count)
  padded = np.full((batch_size,), -1, np.int64)
  padded[:len(global_rows)] = global_rows
  rows = padded[local]
  real = rows[rows >= 0]
  batch = _padded_batch(source, real, local.stop - local.start)
  return batch


def epoch_batches(source: RowSource, batch_size: int, seed: int, epoch: int,
                  start: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """The shuffled batches of one epoch, from batch `start` on."""
  per_epoch = num_batches(len(source), batch_size)
  for index in range(start, per_epoch):
    yield shuffled_batch(source, batch_size, seed, epoch * per_epoch + index,
                         process_index, process_count)


def ordered_batches(source: RowSource, batch_size: int, process_index: int = 0,
                    process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every row once, in order, for evaluation; the last batch is padded."""
  local = _local_slice(batch_size, process_index, process_count)
  n = len(source)
  for start in range(0, n, batch_size):
    rows = np.arange(start, min(start + batch_size, n))[local]
    yield _padded_batch(source, rows, local.stop - local.start)
