"""Training examples/s against device count, on a mesh of simulated CPU devices.

  python benchmarks/bench_mesh.py [--device_counts=1,2,4,8] [--batch_size=4096]
                                  [--repeats=5] [--rounds=1] [--layouts=...] [--json=FILE]

For each device count N, and each mesh layout that fits N, one subprocess runs
on N simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N,
JAX_PLATFORMS=cpu) and times the real `Trainer.model_step` on random batches of
--batch_size, placed on the mesh before timing, the state donated from step to
step, and at most two steps in flight (more can deadlock simulated devices).
The config is `config_utils.add_paper_training`'s with the model and optimizer
sections of `common.reference_config()` (the model bench_train.py measures) on
top, except the tables' row padding (model.embed_rows_multiple), which keeps the
experiment configs' value in every layout so that the tables can split.
Layouts (the batch is always split over every device, both mesh axes):

  dp           mesh data=N, model=1: pure data parallelism, every table replicated.
  rows@model   mesh data=N/2, model=2 (even N only): embedding tables row-sharded
               over the 'model' axis.
  rows@model4  mesh data=N/4, model=4 (N divisible by 4): tables row-sharded over
               a 'model' axis of 4.
  rows@data    mesh data=N, model=1 (N > 1): embedding tables row-sharded over
               the 'data' axis.

With --rounds=R every layout runs R times, the rounds interleaved (each round
runs every layout once), so that the machine's changing load falls on all
layouts alike; the medians are over all R x --repeats timed runs.

Reports per layout: compile seconds, median examples/s (with min and max), the
ratio to dp on 1 device and to dp on the same N devices, and how many embedding
tables the layout actually shards.

Simulated devices all run on the same CPU cores, so more devices cannot make a
step faster: on a small machine this measures the overhead of sharding (the
partitioned program and its collectives), not a speed-up.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from benchmarks import common
from m3oe_jax import config_utils, sharding
from m3oe_jax.data import pipeline
from m3oe_jax.trainer import Trainer

_DEVICE_COUNTS = flags.DEFINE_list("device_counts", ["1", "2", "4", "8"],
                                   "Numbers of simulated devices.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4096, "Global batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement.")
_EXAMPLES = flags.DEFINE_integer("examples_per_run", 100_000,
                                 "Examples per timed run (at least 3 steps).")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Interleaved rounds of every layout.")
_LAYOUTS = flags.DEFINE_list("layouts", None, "Layouts to run (default: all).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this file.")
_WORKER = flags.DEFINE_string(
    "worker", None, "Internal: measure this layout on --device_counts=N devices (which "
    "must already exist) and print the result as one JSON line.")

# name -> device count -> (mesh.data, mesh.model, mesh.embedding_axis), or None
# where the layout does not fit the device count.
LAYOUTS = {
    "dp": lambda n: (n, 1, ""),
    "rows@model": lambda n: (n // 2, 2, "model") if n % 2 == 0 else None,
    "rows@model4": lambda n: (n // 4, 4, "model") if n % 4 == 0 else None,
    "rows@data": lambda n: (n, 1, "data") if n > 1 else None,
}


def measure(layout: str, device_count: int, batch_size: int, repeats: int,
            examples: int) -> dict:
  """One worker's measurement, in a process started with the simulated devices."""
  if jax.device_count() != device_count:
    raise RuntimeError(f"expected {device_count} devices, found {jax.device_count()} "
                       f"({jax.devices()}); XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}")
  data, model, embedding_axis = LAYOUTS[layout](device_count)
  config = config_utils.add_paper_training(ml_collections.ConfigDict())
  reference = common.reference_config()
  rows_multiple = config.model.embed_rows_multiple
  config.model.update(reference.model)
  config.model.embed_rows_multiple = rows_multiple
  config.optimizer.update(reference.optimizer)
  config.seed = 0
  config.batch_size = config.eval_batch_size = batch_size
  config.mesh.data, config.mesh.model = data, model
  config.mesh.embedding_axis = embedding_axis

  schema = common.MOVIELENS_SCHEMA
  rng = np.random.default_rng(0)
  rows = {"train": 4 * batch_size, "validation": batch_size, "test": batch_size}
  dataset = pipeline.Dataset(schema, {
      split: pipeline.ArraySource(common.random_rows(schema, n, rng))
      for split, n in rows.items()})
  trainer = Trainer(config, dataset, sharding.make_mesh(config.mesh))
  tables = jax.tree.leaves(trainer.state_sharding.params["embedding"])
  state = trainer.initial_state(config.seed)
  batches = [trainer.train_batch(position) for position in range(4)]
  start = time.perf_counter()
  compiled = trainer.model_step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - start
  steps = max(3, examples // batch_size)
  holder = {"state": state}

  def run_once():
    # With many steps queued, simulated CPU devices can deadlock in a collective
    # (seen with jaxlib 0.10.2): after queueing step i, wait for step i - 1.
    s, previous = holder["state"], None
    for i in range(steps):
      s, out = compiled(s, batches[i % len(batches)])
      if previous is not None:
        previous.block_until_ready()
      previous = out["loss"]
    jax.block_until_ready(out["loss"])
    holder["state"] = s

  run_once()  # warm-up
  rates = common.time_runs(run_once, steps * batch_size, repeats)
  return {"device_count": device_count, "layout": layout,
          "mesh": {"data": data, "model": model, "embedding_axis": embedding_axis},
          "batch_size": batch_size, "steps_per_run": steps, "compile_s": compile_s,
          "examples_per_s": rates,
          "sharded_tables": sum(not s.is_fully_replicated for s in tables),
          "tables": len(tables)}


def spawn(layout: str, device_count: int) -> dict:
  """Runs `measure` in a subprocess with `device_count` simulated CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(filter(None, [
      env.get("XLA_FLAGS"), f"--xla_force_host_platform_device_count={device_count}"]))
  command = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--worker={layout}",
             f"--device_counts={device_count}", f"--batch_size={_BATCH_SIZE.value}",
             f"--repeats={_REPEATS.value}", f"--examples_per_run={_EXAMPLES.value}"]
  done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode or not lines:
    stderr = done.stderr.strip().splitlines() or ["(no output)"]
    fatal = [line for line in stderr if re.match(r"F\d{4} ", line)]  # XLA's fatal logs
    return {"device_count": device_count, "layout": layout,
            "error": f"exit status {done.returncode}: {(fatal or stderr[-1:])[0]}"}
  return json.loads(lines[-1])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  counts = sorted({int(c) for c in _DEVICE_COUNTS.value})
  if _WORKER.value:
    if len(counts) != 1:
      raise app.UsageError("--worker takes a single --device_counts value")
    print(json.dumps(measure(_WORKER.value, counts[0], _BATCH_SIZE.value, _REPEATS.value,
                             _EXAMPLES.value)))
    return
  names = _LAYOUTS.value or list(LAYOUTS)
  unknown = sorted(set(names) - set(LAYOUTS))
  if unknown:
    raise app.UsageError(f"unknown --layouts {unknown}; expected some of {list(LAYOUTS)}")
  plan = [(n, name) for n in counts for name in names if LAYOUTS[name](n) is not None]
  runs = {key: [] for key in plan}
  for round_index in range(_ROUNDS.value):
    for n, layout in plan:
      print(f"round {round_index + 1}/{_ROUNDS.value}: {layout} on {n} devices", flush=True)
      runs[(n, layout)].append(spawn(layout, n))
  results = [_combine(n, layout, runs[(n, layout)]) for n, layout in plan]
  _report(results)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"batch_size": _BATCH_SIZE.value, "repeats": _REPEATS.value,
                 "rounds": _ROUNDS.value, "cpu_count": os.cpu_count(), "runs": results},
                f, indent=2)
  failed = [r for r in results if "error" in r]
  if failed:
    sys.exit(f"{len(failed)} of {len(results)} layouts failed")


def _combine(n: int, layout: str, rounds: list[dict]) -> dict:
  """One layout's rounds as one result: medians over every timed run."""
  errors = [r["error"] for r in rounds if "error" in r]
  if errors:
    return {"device_count": n, "layout": layout, "error": errors[0]}
  rates = [rate for r in rounds for rate in r["examples_per_s"]]
  result = {k: v for k, v in rounds[0].items() if k not in ("examples_per_s", "compile_s")}
  result.update(compile_s=statistics.median(r["compile_s"] for r in rounds),
                median_examples_per_s=statistics.median(rates), min=min(rates),
                max=max(rates), examples_per_s=rates)
  return result


def _report(results: list[dict]) -> None:
  print(f"note: the simulated devices all share this machine's {os.cpu_count()} CPU "
        "cores, so this measures sharding overhead, not speed-up.")
  print(f"global batch {_BATCH_SIZE.value}, median of {_ROUNDS.value} x {_REPEATS.value} "
        "timed runs (rounds interleaved)")
  print(f"{'devices':>7} {'layout':>11} {'mesh':>6} {'compile s':>10} {'median ex/s':>12} "
        f"{'min':>9} {'max':>9} {'vs 1':>6} {'vs dp':>6} {'sharded tables':>15}")
  rates = {(r["device_count"], r["layout"]): r["median_examples_per_s"]
           for r in results if "error" not in r}
  for r in results:
    n, layout = r["device_count"], r["layout"]
    if "error" in r:
      print(f"{n:>7} {layout:>11} failed: {r['error']}")
      continue
    one, same = rates.get((1, "dp")), rates.get((n, "dp"))
    r["ratio_to_1_device"] = r["median_examples_per_s"] / one if one else None
    r["ratio_to_dp"] = r["median_examples_per_s"] / same if same else None
    mesh = f"{r['mesh']['data']}x{r['mesh']['model']}"
    vs_one = f"{r['ratio_to_1_device']:.2f}" if one else ""
    vs_dp = f"{r['ratio_to_dp']:.2f}" if same else ""
    tables = f"{r['sharded_tables']}/{r['tables']}"
    print(f"{n:>7} {layout:>11} {mesh:>6} {r['compile_s']:>10.2f} "
          f"{r['median_examples_per_s']:>12,.0f} {r['min']:>9,.0f} {r['max']:>9,.0f} "
          f"{vs_one:>6} {vs_dp:>6} {tables:>15}")
  for r in results:
    n, layout = r["device_count"], r["layout"]
    if "error" in r or layout == "dp" or (n, "dp") not in rates:
      continue
    mesh = f"{r['mesh']['data']}x{r['mesh']['model']}"
    print(f"{layout} ({mesh}, tables over {r['mesh']['embedding_axis']!r}) vs dp ({n}x1, "
          f"tables replicated) on {n} devices: {r['median_examples_per_s']:,.0f} / "
          f"{rates[(n, 'dp')]:,.0f} examples/s = {r['ratio_to_dp']:.2f}x")


if __name__ == "__main__":
  app.run(main)
