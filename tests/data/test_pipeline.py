"""Each process reads only its own rows of every global batch."""

import numpy as np
import pytest

from m3oe_jax.data import pipeline


class RecordingSource:
  """Rows 0..n-1 whose columns hold their own index; remembers every row read."""

  def __init__(self, n):
    self.source = pipeline.ArraySource({
        "sparse": np.arange(n)[:, None], "dense": np.zeros((n, 1)),
        "domain": np.zeros(n), "labels": np.zeros((n, 1))})
    self.read: list[int] = []

  def __len__(self):
    return len(self.source)

  def take(self, indices):
    self.read.extend(int(i) for i in indices)
    return self.source.take(indices)


@pytest.mark.parametrize("position", [0, 3, 4])  # 4: the last, partial batch of the epoch
def test_shuffled_batches_split_between_processes(position):
  n, batch_size = 70, 16
  whole = RecordingSource(n)
  global_batch = pipeline.shuffled_batch(whole, batch_size, 7, position)
  halves = []
  for p in range(2):
    source = RecordingSource(n)
    halves.append(pipeline.shuffled_batch(source, batch_size, 7, position, p, 2))
    rows = halves[-1]["sparse"][halves[-1]["mask"] > 0, 0]
    assert source.read == rows.tolist()  # this process read these rows, nothing else
  for key in global_batch:
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), global_batch[key])
  assert not set(halves[0]["sparse"][halves[0]["mask"] > 0, 0]) & set(
      halves[1]["sparse"][halves[1]["mask"] > 0, 0])


def test_ordered_batches_cover_every_row_once_across_processes():
  n, batch_size = 70, 16
  seen = []
  for p in range(4):
    source = RecordingSource(n)
    for batch in pipeline.ordered_batches(source, batch_size, p, 4):
      seen.extend(batch["sparse"][batch["mask"] > 0, 0].tolist())
    assert len(source.read) == len(set(source.read))
  assert sorted(seen) == list(range(n))


def test_a_batch_that_processes_cannot_split_evenly_is_refused():
  with pytest.raises(ValueError, match="not divisible by the number of processes"):
    pipeline.shuffled_batch(RecordingSource(10), 9, 0, 0, 0, 2)


def test_stacked_batches_across_an_epoch_end_read_only_real_rows_once():
  n, batch_size = 70, 16  # 5 batches an epoch, the last with 6 real rows
  for p in range(2):
    source = RecordingSource(n)
    stacked = pipeline.shuffled_batches(source, batch_size, 7, 3, 4, p, 2)  # batches 3..6
    assert stacked["sparse"].shape == (4, batch_size // 2, 1)
    for j in range(4):
      single = pipeline.shuffled_batch(RecordingSource(n), batch_size, 7, 3 + j, p, 2)
      for key, value in single.items():
        np.testing.assert_array_equal(stacked[key][j], value)
    real = stacked["sparse"][stacked["mask"] > 0, 0]
    assert source.read == real.tolist()  # one read per real row, in batch order
    padding = stacked["mask"] == 0  # batch 4's 6 real rows all fall in process 0's half
    assert padding.sum() == (2, 8)[p] and padding[1].all() == bool(p)
    assert not np.any(stacked["sparse"][padding])


def test_stacked_batches_keep_a_column_without_features():  # e.g. no dense features
  source = pipeline.ArraySource({
      "sparse": np.arange(70)[:, None], "dense": np.zeros((70, 0), np.float32),
      "domain": np.zeros(70, np.int32), "labels": np.zeros((70, 2), np.float32)})
  stacked = pipeline.shuffled_batches(source, 16, 7, 3, 3, 1, 2)
  assert stacked["dense"].shape == (3, 8, 0) and stacked["sparse"].shape == (3, 8, 1)
