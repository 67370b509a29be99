"""Whole training epochs of the real trainer against its step alone.

  python benchmarks/bench_end_to_end.py                        # 1M rows, batch 4096 and 40960
  python benchmarks/bench_end_to_end.py --rows=200000 --model_size=tiny   # quick, on a CPU
  python benchmarks/bench_end_to_end.py --steps_per_call=1,4 --prefetch_batches=0,2
  python benchmarks/bench_end_to_end.py --dtypes=float32,bfloat16   # config.model.dtype
  python benchmarks/bench_end_to_end.py --async_checkpointing=true,false

Data: MovieLens-1M-sized random rows (`--rows`, the schema of benchmarks/common.py),
split 8:1:1 and held as the trainer would hold prepared data (`--placement`: host
arrays, memory-mapped .npy files, or device arrays). Each configuration (batch
size x compute dtype x steps per call x prefetch depth x checkpoint mode) runs
`train_and_evaluate` for `--epochs` epochs in a fresh workdir (batches, steps,
logging, health checks, validation each epoch, checkpoints, the test pass), with
`Timings` recording each phase. Its
training examples/s is the median over the epochs after the first (the first
compiles); evaluation and checkpoint seconds are reported beside it, not in it.
Checkpoint seconds are the time the training loop waits for its saves: the whole
write when blocking (`async false`), the copy to host memory and any wait for
the previous save when written in the background (`async true`, the default).

The pure step is the same `Trainer.multi_step` (the same k) on batches already
on the devices, timed over one epoch's worth of calls before and after each
training run (alternating, so both see the same machine load); its median is
the ceiling the epoch is compared with (`epoch / step`; target >= 0.90). `input`
is the input path alone (the same calls' batches gathered, stacked and put on the
devices, no step): the other ceiling, which the background thread must keep above
the step's rate. `gain` is each row's epoch examples/s over the k=1 row's of the
same batch size, dtype, prefetch depth and checkpoint mode. All runs share one compilation cache
folder, so only a configuration's first run compiles.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from benchmarks.common import MOVIELENS_SCHEMA, random_rows
from m3oe_jax import run_context, sharding, train
from m3oe_jax.config_utils import add_paper_training, shrink_to_tiny
from m3oe_jax.data import pipeline
from m3oe_jax.data.pipeline import ArraySource, Dataset
from m3oe_jax.trainer import Trainer

_ROWS = flags.DEFINE_integer("rows", 1_000_000, "Rows of the whole dataset (8:1:1).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["4096", "40960"], "Train batch sizes.")
_STEPS_PER_CALL = flags.DEFINE_list("steps_per_call", ["1", "4"], "config.steps_per_call values.")
_PREFETCH = flags.DEFINE_list("prefetch_batches", ["2"], "config.prefetch_batches values.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32"], "config.model.dtype values.")
_ASYNC = flags.DEFINE_list("async_checkpointing", ["true"],
                           "config.async_checkpointing values: true, false.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs per training run (the first compiles).")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Training runs per configuration.")
_PLACEMENT = flags.DEFINE_enum("placement", "host", ["host", "stream", "device"],
                               "How the prepared rows are held.")
_MODEL_SIZE = flags.DEFINE_enum("model_size", "paper", ["paper", "tiny"],
                                "M3oE at the paper's size or shrink_to_tiny's.")
_MODEL = flags.DEFINE_string("model", "m3oe", "Registered model name.")
_FOLDER = flags.DEFINE_string("folder", None, "Folder for the runs (default: a temp dir).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this file.")


def make_dataset(num_rows: int, placement: str, folder: pathlib.Path) -> Dataset:
  rows = random_rows(MOVIELENS_SCHEMA, num_rows, np.random.default_rng(0))
  bounds = [0, int(num_rows * 0.8), int(num_rows * 0.9), num_rows]
  splits = {}
  for name, start, stop in zip(pipeline.SPLITS, bounds[:-1], bounds[1:]):
    columns = {k: v[start:stop] for k, v in rows.items()}
    if placement == "host":
      splits[name] = ArraySource(columns)
      continue
    from m3oe_jax.data import prepared  # pylint: disable=g-import-not-at-top
    if placement == "device":
      splits[name] = prepared.DeviceSource(columns)
      continue
    split_dir = folder / "columnar" / name
    split_dir.mkdir(parents=True, exist_ok=True)
    for key, value in columns.items():
      np.save(split_dir / f"{key}.npy", value)
    splits[name] = prepared.MemmapSource(str(split_dir))
  return Dataset(schema=MOVIELENS_SCHEMA, splits=splits)


def make_config(batch_size: int, steps_per_call: int, prefetch: int, dtype: str,
                cache_dir: str, asynchronous: bool = True) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict({"name": "benchmark", "rows": _ROWS.value})
  add_paper_training(config, _MODEL.value)
  if _MODEL_SIZE.value == "tiny":
    shrink_to_tiny(config)
  config.model.dtype = dtype
  config.batch_size = config.eval_batch_size = batch_size
  config.num_epochs = _EPOCHS.value
  config.patience = _EPOCHS.value + 1
  config.steps_per_call = steps_per_call
  config.prefetch_batches = prefetch
  config.async_checkpointing = asynchronous
  config.compilation_cache_dir = cache_dir
  config.divergence_factor = 0.0  # random labels: the loss may do anything
  return config


def pure_step_rate(trainer: Trainer, state, batch_size: int, k: int, calls: int):
  """(state, examples/s) of `calls` calls of `multi_step` on resident batches."""
  batches = [trainer.train_batches(i * k, k) for i in range(min(calls, 4))]
  state, out = trainer.multi_step(state, batches[0], np.int32(k))  # compiled or cached
  jax.block_until_ready(out)
  in_flight = []  # at most two calls, as in the trainer
  start = time.perf_counter()
  for i in range(calls):
    state, out = trainer.multi_step(state, batches[i % len(batches)], np.int32(k))
    in_flight.append(out["loss"])
    if len(in_flight) > 1:
      jax.block_until_ready(in_flight.pop(0))
  jax.block_until_ready(state)
  return state, calls * k * batch_size / (time.perf_counter() - start)


def input_rate(trainer: Trainer, batch_size: int, k: int, calls: int) -> float:
  """Examples/s of the input path alone: `calls` calls' batches gathered from the
  prepared rows, stacked and put on the devices, as the prefetch thread does it."""
  start = time.perf_counter()
  for i in range(calls):
    batches = trainer.train_batches(i * k, k)
  jax.block_until_ready(batches)
  return calls * k * batch_size / (time.perf_counter() - start)


def measure(dataset: Dataset, root: pathlib.Path, batch_size: int, k: int, prefetch: int,
            dtype: str, cache_dir: str, asynchronous: bool) -> dict:
  config = make_config(batch_size, k, prefetch, dtype, cache_dir, asynchronous)
  trainer = Trainer(config, dataset, sharding.make_mesh(config.mesh))
  state = trainer.initial_state(0)
  steps_per_epoch = pipeline.num_batches(len(dataset.splits["train"]), batch_size)
  calls = max(1, steps_per_epoch // k)
  step_rates, epoch_rates, runs = [], [], []
  input_examples_per_s = input_rate(trainer, batch_size, k, calls)
  state, rate = pure_step_rate(trainer, state, batch_size, k, calls)
  step_rates.append(rate)
  for repeat in range(_REPEATS.value):
    timings = run_context.Timings()
    workdir = root / f"b{batch_size}_k{k}_p{prefetch}_{dtype}_a{int(asynchronous)}_r{repeat}"
    with contextlib.redirect_stdout(io.StringIO()):  # the run's metric tables
      train.train_and_evaluate(config, str(workdir), dataset=dataset, timings=timings)
    epoch_rates += [steps * batch_size / seconds for epoch, steps, seconds in timings.epochs
                    if epoch > 0]
    runs.append(timings)
    state, rate = pure_step_rate(trainer, state, batch_size, k, calls)
    step_rates.append(rate)
  epochs = max(1, _EPOCHS.value)
  return {
      "batch_size": batch_size, "steps_per_call": k, "prefetch_batches": prefetch,
      "dtype": dtype, "async_checkpointing": asynchronous,
      "steps_per_epoch": steps_per_epoch,
      "epoch_examples_per_s": statistics.median(epoch_rates) if epoch_rates else None,
      "epoch_rates": epoch_rates,
      "step_examples_per_s": statistics.median(step_rates), "step_rates": step_rates,
      "input_examples_per_s": input_examples_per_s,
      "evaluation_s_per_epoch": statistics.median(
          sum(t.evaluation[:-1]) / epochs for t in runs),
      "checkpoint_s_per_epoch": statistics.median(
          sum(t.checkpointing) / epochs for t in runs),
      "compile_s": [round(t.compilation, 2) for t in runs],
      "cache_hits": [t.cache_hits for t in runs],
      "first_call_s": [round(t.first_call, 2) for t in runs],
  }


def _bool_flag(value: str) -> bool:
  if value.lower() not in ("true", "false"):
    raise app.UsageError(f"--async_checkpointing={value}: each value must be true or false")
  return value.lower() == "true"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(_FOLDER.value or tmp)
    dataset = make_dataset(_ROWS.value, _PLACEMENT.value, root / "data")
    cache_dir = str(root / "compilation_cache")
    # The pure step's programs too (train_and_evaluate sets the same for its run).
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    print(f"{jax.devices()[0].device_kind} x {jax.device_count()}, {_ROWS.value} rows "
          f"({len(dataset.splits['train'])} train), placement {_PLACEMENT.value}, "
          f"model {_MODEL.value} ({_MODEL_SIZE.value}), {_EPOCHS.value} epochs x "
          f"{_REPEATS.value} runs per row", flush=True)
    results = []
    modes = [_bool_flag(v) for v in _ASYNC.value]
    for batch_size in map(int, _BATCH_SIZES.value):
      for dtype in _DTYPES.value:
        for prefetch in map(int, _PREFETCH.value):
          for k in map(int, _STEPS_PER_CALL.value):
            for asynchronous in modes:
              results.append(measure(dataset, root, batch_size, k, prefetch, dtype, cache_dir,
                                     asynchronous))
              r = results[-1]
              print(f"  batch {batch_size} {dtype} k={k} prefetch={prefetch} "
                    f"async={asynchronous}: epochs {[round(x) for x in r['epoch_rates']]}, "
                    f"step {[round(x) for x in r['step_rates']]} examples/s", flush=True)
  header = (f"{'batch':>6} {'dtype':>8} {'k':>3} {'prefetch':>8} {'async':>5} {'epoch ex/s':>11} "
            f"{'step ex/s':>11} {'input ex/s':>11} "
            f"{'epoch/step':>10} {'gain':>6} {'eval s/ep':>9} {'ckpt s/ep':>9} "
            f"{'compile s':>10} {'1st call s':>10}")
  print(header)
  for r in results:
    base = next(x for x in results if x["batch_size"] == r["batch_size"]
                and x["prefetch_batches"] == r["prefetch_batches"]
                and x["dtype"] == r["dtype"]
                and x["async_checkpointing"] == r["async_checkpointing"]
                and x["steps_per_call"] == 1) if any(
                    x["steps_per_call"] == 1 for x in results) else None
    epoch = r["epoch_examples_per_s"]
    ratio = epoch / r["step_examples_per_s"] if epoch else float("nan")
    gain = epoch / base["epoch_examples_per_s"] if base and epoch and base[
        "epoch_examples_per_s"] else float("nan")
    print(f"{r['batch_size']:>6} {r['dtype']:>8} {r['steps_per_call']:>3} "
          f"{r['prefetch_batches']:>8} {str(r['async_checkpointing']).lower():>5} "
          f"{epoch or float('nan'):>11.0f} {r['step_examples_per_s']:>11.0f} "
          f"{r['input_examples_per_s']:>11.0f} {ratio:>10.2f} "
          f"{gain:>6.2f} {r['evaluation_s_per_epoch']:>9.2f} {r['checkpoint_s_per_epoch']:>9.2f} "
          f"{'/'.join(map(str, r['compile_s'])):>10} "
          f"{'/'.join(map(str, r['first_call_s'])):>10}")
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(main)
