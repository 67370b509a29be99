"""Preparation in real processes: killed with SIGKILL mid-way and rerun, and two
preparations of the same dataset at once. Neither may leave anything behind,
and both must give the same prepared data as one uninterrupted preparation."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from m3oe_jax.data import fake_raw, pipeline, prepared
from m3oe_jax.data.raw import storage

REPO = pathlib.Path(__file__).resolve().parents[2]

# Prepares in a child process. Mode `run`: as is; `hang`: stops for good once the
# rows are spilled (before the split); `wait:<file>`: stops there until <file>
# exists. <marker> is created when this process reaches that point, i.e. when it
# really prepares (a process that waits for another's result never does).
CHILD = r"""
import json, os, sys, time
import ml_collections
from m3oe_jax.data import prepared
from m3oe_jax.data.raw import splits
cfg = ml_collections.ConfigDict(json.loads(sys.argv[1]))
mode, marker = sys.argv[2], sys.argv[3]
temporal = splits.temporal_assignment
def paused(*args, **kwargs):
  open(marker, "w").close()
  if mode == "hang":
    time.sleep(3600)
  if mode.startswith("wait:"):
    deadline = time.time() + 300
    while not os.path.exists(mode[5:]) and time.time() < deadline:
      time.sleep(0.05)
  return temporal(*args, **kwargs)
splits.temporal_assignment = paused
ds = prepared.load(cfg)
print(json.dumps({s: len(ds.splits[s]) for s in ds.splits}))
"""


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("prep")
  top = fake_raw.write_kuairand(tmp / "raw", num_rows=2000, num_users=50, num_videos=80,
                                seed=5)
  child = tmp / "child.py"
  child.write_text(CHILD)
  clean = tmp / "clean"
  proc = _spawn(child, _config(top, clean, None), "run", tmp / "clean.marker", tmp)
  _finish(proc)
  return top, child, clean


def _config(top, data_dir, scratch):
  return dict(name="kuairand", data_dir=str(data_dir), extracted_dir=str(top),
              download=False, placement="host", scratch_dir=str(scratch or ""),
              tabs=[0, 1, 4], sparse_features=["user_id", "video_id", "tag", "counts",
                                               "domain"])


def _spawn(child, cfg, mode, marker, logdir):
  log = open(pathlib.Path(logdir) / f"{pathlib.Path(marker).name}.log", "w")
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.Popen([sys.executable, str(child), json.dumps(cfg), mode, str(marker)],
                          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
  proc.log_path = log.name
  log.close()
  return proc


def _finish(proc, timeout=300):
  assert proc.wait(timeout) == 0, pathlib.Path(proc.log_path).read_text()[-3000:]
  return pathlib.Path(proc.log_path).read_text()


def _wait_until(condition, proc, what, timeout=300):
  deadline = time.time() + timeout
  while not condition():
    if proc.poll() is not None:
      pytest.fail(f"the child exited before {what}: "
                  + pathlib.Path(proc.log_path).read_text()[-3000:])
    if time.time() > deadline:
      proc.kill()
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.05)


def _tree(root):
  return sorted(str(p.relative_to(root)) for p in pathlib.Path(root).rglob("*"))


def _prepared_folder(data_dir):
  (info,) = pathlib.Path(data_dir).glob("m3oe_kuairand/*/*/dataset_info.json")
  return info.parent


def _same_prepared_data(cfg, clean):
  data_dir = cfg["data_dir"]
  assert _tree(data_dir) == _tree(clean)
  got, want = _prepared_folder(data_dir), _prepared_folder(clean)
  for p in sorted(want.rglob("*.npy")):
    np.testing.assert_array_equal(np.load(got / p.relative_to(want)), np.load(p),
                                  err_msg=str(p))
  builders = [prepared.make_builder(ml_collections.ConfigDict({**cfg, "data_dir": str(d)}))
              for d in (data_dir, clean)]
  for split in pipeline.SPLITS:
    a, b = (prepared.read_split_from_tfds(x, split) for x in builders)
    for k in b:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"{split} {k}")
  a = json.loads((got / storage.PREPARED_SCHEMA_FILE).read_text())
  b = json.loads((want / storage.PREPARED_SCHEMA_FILE).read_text())
  assert a == b


def _holder_and_waiter(child, cfg, first_mode: str, tmp_path):
  """A preparation holding the lock in `first_mode`, and a second one that has
  started waiting for it."""
  first = _spawn(child, cfg, first_mode, tmp_path / "first.marker", tmp_path)
  _wait_until((tmp_path / "first.marker").exists, first, "the first preparation")
  second = _spawn(child, cfg, "run", tmp_path / "second.marker", tmp_path)
  _wait_until(lambda: "is being prepared by pid" in pathlib.Path(
      second.log_path).read_text(), second, "the second to wait for the first")
  return first, second


@pytest.mark.slow
def test_rerun_after_sigkill_cleans_up_and_gives_the_same_data(raw, tmp_path):
  top, child, clean = raw
  data, scratch = tmp_path / "tfds", tmp_path / "scratch"
  cfg = _config(top, data, scratch)
  marker = tmp_path / "killed.marker"
  proc = _spawn(child, cfg, "hang", marker, tmp_path)
  _wait_until(marker.exists, proc, "the preparation to be under way")
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(60) == -signal.SIGKILL
  config_dir = next(data.glob("m3oe_kuairand/*"))
  left = sorted(p.name for p in config_dir.iterdir())
  assert any(n.startswith("incomplete.") for n in left), left
  assert "1.0.0.lock" in left  # the dead holder's record is still in it
  assert json.loads((config_dir / "1.0.0.lock").read_text())["pid"] == proc.pid
  spilled = list(scratch.rglob("*.bin"))
  assert spilled, _tree(scratch)

  rerun = _spawn(child, cfg, "run", tmp_path / "rerun.marker", tmp_path)
  out = _finish(rerun)
  assert f"pid {proc.pid}" in out and "was interrupted" in out, out[-3000:]
  _same_prepared_data(cfg, clean)
  assert _tree(scratch) == []


@pytest.mark.slow
def test_two_preparations_at_once_do_the_work_once(raw, tmp_path):
  top, child, clean = raw
  data, scratch = tmp_path / "tfds", tmp_path / "scratch"
  cfg = _config(top, data, scratch)
  go = tmp_path / "go"
  first, second = _holder_and_waiter(child, cfg, f"wait:{go}", tmp_path)
  go.touch()
  out_first, out_second = _finish(first), _finish(second)
  assert not (tmp_path / "second.marker").exists()  # it never prepared
  assert f"pid {first.pid}" in out_second
  assert out_first.splitlines()[-1] == out_second.splitlines()[-1]  # rows per split
  _same_prepared_data(cfg, clean)
  assert _tree(scratch) == []


@pytest.mark.slow
def test_a_waiting_preparation_takes_over_when_the_holder_is_killed(raw, tmp_path):
  top, child, clean = raw
  data, scratch = tmp_path / "tfds", tmp_path / "scratch"
  cfg = _config(top, data, scratch)
  first, second = _holder_and_waiter(child, cfg, "hang", tmp_path)
  first.send_signal(signal.SIGKILL)
  assert first.wait(60) == -signal.SIGKILL
  out = _finish(second)
  assert (tmp_path / "second.marker").exists()  # it prepared after all
  assert f"pid {first.pid}" in out and "was interrupted" in out
  _same_prepared_data(cfg, clean)
  assert _tree(scratch) == []
