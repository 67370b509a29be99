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
