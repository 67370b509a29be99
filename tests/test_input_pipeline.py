"""The input pipeline that runs ahead: the plan of training calls and the
background prefetcher."""

import threading
import time

import jax
import numpy as np
import pytest

from m3oe_jax import sharding
from m3oe_jax.data import load_dataset, pipeline
from m3oe_jax.trainer import Trainer
from tests.helpers import tiny_train_config


def _covered(plan):
  return [i for index, count in plan for i in range(index, index + count)]


@pytest.mark.parametrize("k", [1, 2, 4, 7, 25, 30])
def test_a_plan_covers_every_batch_once_in_order(k):
  plan = pipeline.call_plan(0, 0, 25, k)
  assert _covered(plan) == list(range(25))
  for index, count in plan:
    assert count in (1, k)
    if count == k:
      assert index % k == 0
  # Only the tail that does not fill a call runs as single steps.
  assert sum(count == 1 for _, count in plan) == (25 % k if k > 1 else 25)


def test_a_resumed_plan_is_the_tail_of_the_uninterrupted_one():
  full = pipeline.call_plan(50, 0, 25, 4, 5)
  for position, (index, _) in enumerate(full):
    assert pipeline.call_plan(50, index, 25, 4, 5) == full[position:]


@pytest.mark.parametrize("first_step", [0, 25, 50, 75])
def test_no_call_runs_past_a_boundary_step(first_step):
  every, k = 5, 4
  plan = pipeline.call_plan(first_step, 0, 25, k, every)
  assert _covered(plan) == list(range(25))
  ends = {first_step + index + count for index, count in plan}
  for index, count in plan:
    inside = range(first_step + index + 1, first_step + index + count)
    assert not any(s % every == 0 for s in inside), (index, count)
  assert all(s in ends for s in range(first_step + 1, first_step + 26) if s % every == 0)
  assert any(count == k for _, count in plan)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetcher_delivers_every_item_in_order(depth):
  with pipeline.Prefetcher(lambda i: i * i, range(10), depth) as feed:
    assert list(feed) == [(i, i * i) for i in range(10)]


def test_prefetcher_runs_at_most_depth_ahead_and_never_past_the_last_item():
  built = []
  depth = 2

  def make(i):
    built.append(i)
    return i

  with pipeline.Prefetcher(make, range(6), depth) as feed:
    for consumed, (item, _) in enumerate(feed, 1):
      time.sleep(0.05)
      # Queued (depth) plus the one being built; the items are 0..5 only.
      assert len(built) <= consumed + depth + 1
      assert item == consumed - 1
  assert built == list(range(6))


def test_an_error_in_the_thread_surfaces_in_the_caller_after_the_items_before_it():

  def make(i):
    if i == 3:
      raise KeyError("bad batch 3")
    return i

  got = []
  with pytest.raises(KeyError, match="bad batch 3"):
    with pipeline.Prefetcher(make, range(6), 2) as feed:
      for item, _ in feed:
        got.append(item)
  assert got == [0, 1, 2]
  assert not any(t.name == "m3oe-prefetch" for t in threading.enumerate())


def test_leaving_early_stops_the_thread():
  built = []
  started = threading.Event()

  def make(i):
    built.append(i)
    started.set()
    return i

  feed = pipeline.Prefetcher(make, range(1000), 2)
  with feed:
    for item, _ in feed:
      if item == 2:
        break
  assert not feed._thread.is_alive()  # pylint: disable=protected-access
  assert len(built) <= 2 + 1 + 2 + 1


def test_stacked_batches_are_the_single_batches_on_the_mesh():
  config = tiny_train_config(batch_size=120)  # 27 batches an epoch, the last padded
  dataset = load_dataset(config.data)
  trainer = Trainer(config, dataset, sharding.make_mesh(config.mesh, jax.devices()[:1]))
  stacked = trainer.train_batches(25, 4)  # crosses into the second epoch
  assert stacked["sparse"].shape[:2] == (4, config.batch_size)
  assert stacked["sparse"].sharding == sharding.stacked_batch_sharding(trainer.mesh)
  for j in range(4):
    single = trainer.train_batch(25 + j)
    for key, value in single.items():
      np.testing.assert_array_equal(np.asarray(stacked[key][j]), np.asarray(value))
  assert float(np.asarray(stacked["mask"][1]).min()) == 0.0
  assert float(np.asarray(stacked["mask"][2]).min()) == 1.0


@pytest.mark.parametrize("placement", ["stream", "device"])
def test_stacked_batches_are_the_same_for_every_placement(placement, tmp_path):
  from m3oe_jax.data import prepared  # pylint: disable=g-import-not-at-top
  config = tiny_train_config(batch_size=120)
  host = load_dataset(config.data)
  splits = {}
  for name, source in host.splits.items():
    columns = source.take(np.arange(len(source)))
    if placement == "device":
      splits[name] = prepared.DeviceSource(columns)
      continue
    (tmp_path / name).mkdir()
    for key, value in columns.items():
      np.save(tmp_path / name / f"{key}.npy", value)
    splits[name] = prepared.MemmapSource(str(tmp_path / name))
  other = pipeline.Dataset(schema=host.schema, splits=splits)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  want = Trainer(config, host, mesh).train_batches(25, 3)
  got = Trainer(config, other, mesh).train_batches(25, 3)
  for key, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value))
    assert got[key].sharding == value.sharding
