"""Training and evaluation throughput of M3oE on the reference's MovieLens-sized model.

  python benchmarks/bench_train.py [--batch_sizes=256,4096,40960] [--repeats=5]

Reports, per batch size: compile time, median examples/s over repeated timed runs
after compilation (with min and max), peak memory, and the step's achieved FLOP/s
(XLA's cost analysis times steps/s) next to the FLOP/s of one 2048x2048 float32
matmul measured in the same run. Batches are resident on the device, so this
measures the jitted step, not the input pipeline (see bench_data.py for that).
The reference column is the authors' PyTorch code (torch 2.13, 2 threads) on a
2-core machine of the class CI runs on; an absolute figure only means something
on the machine it was measured on.
"""

from __future__ import annotations

import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from m3oe_jax import optim, step
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.models import build_model, init_params

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["256", "4096", "40960"], "Batch sizes.")
_EVAL_BATCH_SIZES = flags.DEFINE_list("eval_batch_sizes", ["4096"], "Eval batch sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement.")
_EXAMPLES = flags.DEFINE_integer("examples_per_run", 200_000,
                                 "Examples per timed run (at least 3 steps).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this file.")

REFERENCE_TRAIN = {256: 17_000, 4096: 34_500, 40960: 27_700}  # examples/s, PyTorch, 2 cores
REFERENCE_EVAL = {4096: 99_000}
TARGET_TRAIN = {256: 2.5, 4096: 1.3, 40960: 1.3}
TARGET_EVAL = 1.3

MOVIELENS_SCHEMA = FeatureSchema(
    sparse_names=["user_id", "movie_id", "gender", "occupation", "zip", "genre", "domain"],
    vocab_sizes=[6040, 3706, 2, 21, 3439, 18, 3],
    dense_names=["age"],
    domain_names=["0", "1", "2"],
    task_names=["click", "like"],
)


def reference_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      model=dict(name="m3oe", embed_dim=16, fcn_dims=(512, 256, 256, 64),
                 num_shared_experts=4, arch_init=1.0, gate_stop_gradient=True,
                 embed_init_std=1e-4),
      optimizer=dict(schedule="reference", model_lr=1e-2, arch_lr=1e-3,
                     weight_decay=1e-5, train_loss="mdmt", arch_loss="mean",
                     arch_every_steps=1)))


def random_batches(schema: FeatureSchema, batch_size: int, count: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(count):
    domain = rng.integers(0, schema.num_domains, batch_size).astype(np.int32)
    sparse = np.stack([rng.integers(0, v, batch_size) for v in schema.vocab_sizes], 1)
    if "domain" in schema.sparse_names:
      sparse[:, schema.sparse_names.index("domain")] = domain
    batches.append(jax.device_put({
        "sparse": sparse.astype(np.int32),
        "dense": rng.random((batch_size, schema.num_dense), np.float32),
        "domain": domain,
        "labels": rng.integers(0, 2, (batch_size, schema.num_tasks)).astype(np.float32),
        "mask": np.ones(batch_size, np.float32),
    }))
  return batches


def peak_memory_bytes() -> int:
  """Peak device memory where the backend reports it, else the process's max RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _time_runs(run_once, examples_per_run: int, repeats: int) -> list[float]:
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    run_once()
    rates.append(examples_per_run / (time.perf_counter() - start))
  return rates


def _flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0] if analysis else {}
  return float(analysis["flops"]) if analysis and "flops" in analysis else None


def bench_train(config, schema, batch_size: int, repeats: int, examples: int) -> dict:
  model = build_model(config.model, schema)
  params = init_params(model, schema, jax.random.key(0))
  optimizers = optim.make_optimizers(config.optimizer, params)
  state = step.create_train_state(params, optimizers)
  batches = random_batches(schema, batch_size, 4)
  model_step = jax.jit(step.make_model_step(model, optimizers, config.optimizer.train_loss,
                                            schema.num_domains), donate_argnums=0)
  start = time.perf_counter()
  compiled = model_step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - start
  steps = max(3, examples // batch_size)
  holder = {"state": state}

  def run_once():
    s = holder["state"]
    for i in range(steps):
      s, out = compiled(s, batches[i % len(batches)])
    jax.block_until_ready(out["loss"])
    holder["state"] = s

  run_once()  # warm-up
  rates = _time_runs(run_once, steps * batch_size, repeats)
  flops = _flops(compiled)
  median = statistics.median(rates)
  return {"batch_size": batch_size, "compile_s": compile_s, "median_examples_per_s": median,
          "min": min(rates), "max": max(rates), "peak_memory_bytes": peak_memory_bytes(),
          "step_flops": flops,
          "achieved_flops_per_s": flops * median / batch_size if flops else None}


def measure_train_throughput(config: ml_collections.ConfigDict, batch_size: int,
                             schema: FeatureSchema | None = None, repeats: int = 3,
                             examples: int = 100_000) -> float:
  """Median training examples/s of the jitted step for `config`'s model."""
  if schema is None:
    from m3oe_jax.data import load_dataset
    schema = load_dataset(config.data).schema
  return bench_train(config, schema, batch_size, repeats, examples)["median_examples_per_s"]


def bench_eval(config, schema, batch_size: int, repeats: int, examples: int) -> dict:
  model = build_model(config.model, schema)
  params = init_params(model, schema, jax.random.key(0))
  batches = random_batches(schema, batch_size, 4)
  eval_step = jax.jit(step.make_eval_step(model))
  start = time.perf_counter()
  compiled = eval_step.lower(params, batches[0]).compile()
  compile_s = time.perf_counter() - start
  steps = max(3, examples // batch_size)

  def run_once():
    for i in range(steps):
      probs, _ = compiled(params, batches[i % len(batches)])
    jax.block_until_ready(probs)

  run_once()
  rates = _time_runs(run_once, steps * batch_size, repeats)
  return {"batch_size": batch_size, "compile_s": compile_s,
          "median_examples_per_s": statistics.median(rates), "min": min(rates),
          "max": max(rates), "peak_memory_bytes": peak_memory_bytes()}


def matmul_flops_per_s(n: int = 2048, repeats: int = 10) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  jax.block_until_ready(mm(a))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(mm(a))
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / statistics.median(times)


def main(argv):
  del argv
  config = reference_config()
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}")
  peak = matmul_flops_per_s()
  print(f"2048^2 float32 matmul: {peak / 1e9:.1f} GFLOP/s")
  results = {"matmul_flops_per_s": peak, "train": [], "eval": []}
  header = (f"{'':6}{'batch':>7} {'compile s':>10} {'median ex/s':>12} {'min':>9} "
            f"{'max':>9} {'ref ex/s':>9} {'ratio':>6} {'target':>6} {'GFLOP/s':>8} "
            f"{'peak MiB':>9}")
  print(header)
  runs = [("train", bench_train, _BATCH_SIZES.value, REFERENCE_TRAIN, TARGET_TRAIN),
          ("eval", bench_eval, _EVAL_BATCH_SIZES.value, REFERENCE_EVAL,
           dict.fromkeys(REFERENCE_EVAL, TARGET_EVAL))]
  for kind, bench, sizes, references, targets in runs:
    for b in (int(x) for x in sizes):
      r = bench(config, MOVIELENS_SCHEMA, b, _REPEATS.value, _EXAMPLES.value)
      ref = references.get(b)
      r["reference_examples_per_s"] = ref
      r["ratio"] = r["median_examples_per_s"] / ref if ref else None
      results[kind].append(r)
      flops = r.get("achieved_flops_per_s")
      print(f"{kind:6}{b:>7} {r['compile_s']:>10.2f} {r['median_examples_per_s']:>12,.0f} "
            f"{r['min']:>9,.0f} {r['max']:>9,.0f} {ref or 0:>9,} {(r['ratio'] or 0):>6.2f} "
            f"{targets.get(b, 0):>6.1f} {f'{flops / 1e9:.1f}' if flops else '':>8} "
            f"{r['peak_memory_bytes'] / 2**20:>9.0f}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
