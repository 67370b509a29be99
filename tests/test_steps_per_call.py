"""Several training steps per jitted call (config.steps_per_call): the same bits
as one step per call, on one device, on a sharded mesh and through the whole
trainer, including a resumption with another k."""

import json
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from m3oe_jax import checkpoint, params_io, train
from m3oe_jax.errors import ConfigError
from tests import event_files
from tests.helpers import REPO, cpu_env, free_port, tiny_train_config

_SAME_BITS = """
import json, sys, jax, numpy as np
from m3oe_jax import sharding
from m3oe_jax.data import load_dataset
from m3oe_jax.trainer import Trainer
from tests.helpers import tiny_train_config
data, model, axis, k = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
config = tiny_train_config(**{"mesh.data": data, "mesh.model": model,
                              "mesh.embedding_axis": axis})
trainer = Trainer(config, load_dataset(config.data),
                  sharding.make_mesh(config.mesh, jax.devices()[:data * model]))
one_at_a_time, together = trainer.initial_state(0), trainer.initial_state(0)
losses = []
for position in range(10, 10 + 2 * k):  # crosses the end of epoch 0 (25 batches)
  one_at_a_time, out = trainer.multi_step(one_at_a_time, trainer.train_batches(position, 1),
                                          np.int32(1))
  losses.append(float(out["loss"][0]))
together_losses = []
for position in (10, 10 + k):
  together, out = trainer.multi_step(together, trainer.train_batches(position, k), np.int32(k))
  together_losses += [float(v) for v in np.asarray(out["loss"])]
a, b = jax.device_get(one_at_a_time), jax.device_get(together)
differing = [jax.tree_util.keystr(path) for (path, x), y in
             zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b))
             if not np.array_equal(np.asarray(x), np.asarray(y))]
print(json.dumps({"differing": differing, "losses": losses, "together": together_losses,
                  "step": int(b.step)}))
"""


def _same_bits(data, model, axis, k, devices):
  out = subprocess.run([sys.executable, "-c", _SAME_BITS, str(data), str(model), axis, str(k)],
                       cwd=REPO, env=cpu_env(devices), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_k_steps_in_one_call_are_k_single_calls_bit_for_bit():
  report = _same_bits(1, 1, "", 4, 1)
  assert report["differing"] == []
  assert report["together"] == report["losses"]
  assert report["step"] == 8


@pytest.mark.slow
def test_k_steps_in_one_call_are_k_single_calls_bit_for_bit_on_a_sharded_mesh():
  report = _same_bits(4, 2, "model", 3, 8)
  assert report["differing"] == []
  # The logged losses (not the gradients) may be summed in another order here.
  np.testing.assert_allclose(report["together"], report["losses"], rtol=1e-6)


@pytest.mark.parametrize("field,value", [("steps_per_call", 0), ("steps_per_call", 2.5),
                                         ("prefetch_batches", -1), ("steps_per_call", True)])
def test_bad_values_are_refused_naming_the_field(field, value, tmp_path):
  config = ml_collections.ConfigDict({**tiny_train_config().to_dict(), field: value})
  with pytest.raises(ConfigError, match=f"config.{field}"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def _darts(**overrides):
  return tiny_train_config(**{"optimizer.schedule": "darts", "optimizer.arch_every_steps": 5,
                              "num_epochs": 2, "log_every_steps": 5,
                              "checkpoint_every_steps": 10, **overrides})


@pytest.mark.slow
def test_the_trainer_gives_the_same_run_whatever_k_even_when_k_changes_on_resumption(tmp_path):
  cache = str(tmp_path / "cache")
  single = tmp_path / "k1"
  train.train_and_evaluate(_darts(steps_per_call=1, compilation_cache_dir=cache), str(single))
  changed = tmp_path / "k4_then_k3"
  train.train_and_evaluate(_darts(steps_per_call=4, num_epochs=1, prefetch_batches=1,
                                  compilation_cache_dir=cache), str(changed))
  meta = checkpoint.CheckpointStore(changed, read_only=True).read_meta("latest")
  assert meta["progress"]["arch_steps"] == 5  # 25 steps, darts every 5
  train.train_and_evaluate(_darts(steps_per_call=3, compilation_cache_dir=cache), str(changed))

  assert (json.loads((changed / "metrics.json").read_text())
          == json.loads((single / "metrics.json").read_text()))
  for which in ("latest", "best"):
    a, _, _ = params_io.load_params(single, which)
    b, _, _ = params_io.load_params(changed, which)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  stores = [checkpoint.CheckpointStore(w, read_only=True) for w in (single, changed)]
  assert stores[0].read_meta("latest")["progress"] == stores[1].read_meta("latest")["progress"]

  # Epoch 0 with k=4 and darts every 5: calls end at steps 4, 5, 9, 10, 14, 15, ...;
  # epoch 1 with k=3 at 28, 30 (arch step), 33, 35, ...: the loss is logged at the
  # end of each call that covers a multiple of 5, i.e. here exactly at the multiples.
  logged = sorted(s for s, _ in event_files.scalars(changed / "tensorboard")["train/loss"])
  assert logged == list(range(5, 51, 5))


@pytest.mark.slow
def test_logging_and_checkpoints_move_to_the_end_of_the_call(tmp_path):
  config = tiny_train_config(steps_per_call=4, num_epochs=1, log_every_steps=3,
                             checkpoint_every_steps=10, compilation_cache_dir="")
  train.train_and_evaluate(config, str(tmp_path))
  # Calls end at steps 4, 8, ..., 24 and 25 (the tail, a single step).
  logged = sorted(s for s, _ in event_files.scalars(tmp_path / "tensorboard")["train/loss"])
  assert logged == [4, 8, 12, 16, 20, 24, 25]
  # Mid-epoch saves at 12 (covers 10) and 20; the epoch's end saves 25. Two are kept.
  assert checkpoint.CheckpointStore(tmp_path, read_only=True).latest.all_steps() == [20, 25]
  assert not (tmp_path / "compilation_cache").exists()


def _process_command(workdir, count, index, port):
  return [sys.executable, "-m", "m3oe_jax.train", "--config=configs/synthetic.py:tiny",
          f"--workdir={workdir}", "--config.num_epochs=2", "--config.steps_per_call=4",
          "--config.checkpoint_every_steps=1", "--config.log_every_steps=1",
          "--config.optimizer.model_lr=1e-3", "--distributed",
          f"--coordinator_address=localhost:{port}", f"--num_processes={count}",
          f"--process_id={index}"]


@pytest.mark.slow
def test_two_processes_with_k_steps_per_call_stop_together_and_resume(tmp_path):
  """Two processes, 4 steps per call, prefetching: SIGTERM to one stops both at the
  end of the same call; the rerun ends where one process with k=1 ends (to the
  rounding of a sum split over two processes, as in tests/test_scale.py)."""
  workdir, port = tmp_path / "two", free_port()
  procs = [subprocess.Popen(_process_command(workdir, 2, i, port), cwd=REPO, env=cpu_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  latest = workdir / "checkpoints" / "latest"
  deadline = time.time() + 300
  while not (latest.exists() and any(p.name.isdigit() for p in latest.iterdir())):
    assert time.time() < deadline and all(p.poll() is None for p in procs), "no checkpoint"
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  logs = []
  for proc in procs:
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    logs.append(stderr)
  saved = [int(log.split("preempted: saved step ")[1].split()[0]) for log in logs]
  assert saved[0] == saved[1] and 0 < saved[0] < 50, saved
  # Calls end at multiples of 4 within an epoch of 25, or at its single last step.
  assert saved[0] % 25 % 4 == 0, saved

  port = free_port()
  rerun = [subprocess.Popen(_process_command(workdir, 2, i, port), cwd=REPO, env=cpu_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for proc in rerun:
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]

  single = tmp_path / "single"
  train.train_and_evaluate(tiny_train_config(**{"num_epochs": 2, "optimizer.model_lr": 1e-3}),
                           str(single))
  a, _, _ = params_io.load_params(single, "latest")
  b, _, _ = params_io.load_params(workdir, "latest")
  worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert worst < 1e-5
