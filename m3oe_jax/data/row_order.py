"""Row orders given from outside the trainer (`config.train_order`).

An `.npz` file holding, for each stream the trainer reads and each epoch of that
stream, the permutation of the training rows it visits in that epoch:

  train/<e>  the order of training epoch e (batch k is rows k*B .. k*B+B-1 of it)
  arch/<e>   the order of epoch e of the architecture step's own stream of
             training batches (its batch n is batch n of that endless stream)

e counts from 0. Another trainer's recorded order (the authors' DataLoader
sampler, say) replays through this file, so two trainers can be compared step by
step; `reproduce/make_trajectory_goldens.py` writes one.
"""

from __future__ import annotations

import re

import numpy as np
from etils import epath

from m3oe_jax import paths
from m3oe_jax.errors import ConfigError

STREAMS = ("train", "arch")


class RecordedOrder:
  """The epochs' permutations of one stream of an order file; `order(epoch)`."""

  def __init__(self, path: str, stream: str, num_rows: int):
    if stream not in STREAMS:
      raise ValueError(f"unknown stream {stream!r}; expected one of {STREAMS}")
    self.path, arrays = paths.read_npz("train_order", path, "row orders")
    self.stream = stream
    self.epochs = _epochs_of(self.path, arrays, stream, num_rows)

  def __call__(self, epoch: int) -> np.ndarray:
    if epoch not in self.epochs:
      raise ConfigError(
          f"config.train_order={self.path}: no permutation {self.stream}/{epoch} (it has "
          f"{self.stream} epochs {sorted(self.epochs)}); record as many epochs as the run "
          "trains, or lower config.num_epochs")
    return self.epochs[epoch]


def _epochs_of(path: epath.Path, arrays: dict, stream: str,
               num_rows: int) -> dict[int, np.ndarray]:
  """The checked permutations of `stream`, by epoch, among an order file's arrays."""
  where = f"config.train_order={path}"
  unknown = [n for n in arrays if not re.fullmatch(rf"(?:{'|'.join(STREAMS)})/\d+", n)]
  if unknown:
    raise ConfigError(f"{where}: unexpected entries {unknown[:5]}; expected "
                      "train/<epoch> and arch/<epoch>")
  epochs = {}
  for name, order in arrays.items():
    if not name.startswith(stream + "/"):
      continue
    if (order.ndim != 1 or order.dtype.kind not in "iu" or len(order) != num_rows
        or not np.array_equal(np.sort(order), np.arange(num_rows))):
      raise ConfigError(f"{where}: {name} is not a permutation of the {num_rows:,} "
                        "training rows (0-based row numbers, each once)")
    order = order.astype(np.int64)
    order.flags.writeable = False
    epochs[int(name.split("/")[1])] = order
  if not epochs:
    raise ConfigError(f"{where}: no {stream}/<epoch> entries")
  return epochs
