"""Training and evaluation throughput of M3oE on the reference's MovieLens-sized model.

  python benchmarks/bench_train.py [--batch_sizes=256,4096,40960] [--repeats=5]
  python benchmarks/bench_train.py --batch_sizes=4096,40960,262144 --embedding_share  # GPU
  python benchmarks/bench_train.py --models=all --batch_sizes=4096,40960 \
      --eval_batch_sizes=4096,40960   # every registered model, one table
  python benchmarks/bench_train.py --batch_sizes=4096 --dtypes=float32,bfloat16  # side by side

With --models, every named model (at its paper/spec size, -MDMT shape: 3
domains x 2 tasks) is measured in the same run and a last table lists, per model,
parameters without embeddings, the train step's FLOPs per example and its
achieved FLOP/s, train and eval examples/s at each batch size, and the speed
relative to M3oE.

Reports, per batch size: compile time, median examples/s over repeated timed runs
after compilation (with min and max), peak memory, and the step's achieved FLOP/s
(XLA's cost analysis times steps/s) next to the FLOP/s of one 2048x2048 float32
matmul measured in the same run. Batches are resident on the device, so this
measures the jitted step, not the input pipeline (see bench_data.py for that).
Peak memory is the process's peak so far (device memory where the backend
reports it, else max RSS), so a row never reads lower than the rows before it.

The reference columns are the authors' PyTorch code (torch 2.13, 2 threads) on a
2-core machine of the class CI runs on; an absolute figure only means something
on the machine it was measured on. By default (--reference_columns=auto) they
are left blank on any device other than a CPU.

--embedding_share also times, for each train batch size, the same step with the
`Embeddings` module's output replaced (through `flax.linen.intercept_methods`)
by its precomputed [B, F] result for that batch, passed to the jitted step as an
argument. The backward pass still computes the loss's gradient with respect to
that output, as it must for real lookups, but reduces it to one number instead
of scatter-adding it into the tables; the tables stay in the state and still get
gradients (zero but for one entry) and optimizer updates. So the difference is the
lookups' forward gathers and backward scatter-adds, and
`embedding_share = 1 - t_without_lookups / t_full` of the median step times, the
two steps timed alternately. Before timing, both steps must give the same loss
on one batch with unit-scale tables (so that the lookups matter to the loss).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=wrong-import-position
from benchmarks.common import (MOVIELENS_SCHEMA, peak_memory_bytes, random_batches,
                               reference_config, run_reference_harness, time_runs)
from m3oe_jax import losses, optim, step
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.models import MODELS, build_model, init_variables
from m3oe_jax.models.layers import Embeddings

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["256", "4096", "40960"], "Batch sizes.")
_EVAL_BATCH_SIZES = flags.DEFINE_list("eval_batch_sizes", ["4096"], "Eval batch sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement.")
_EXAMPLES = flags.DEFINE_integer("examples_per_run", 200_000,
                                 "Examples per timed run (at least 3 steps).")
_EMBEDDING_SHARE = flags.DEFINE_bool(
    "embedding_share", False,
    "Also time each train step without its embedding lookups and report their share.")
_REFERENCE_COLUMNS = flags.DEFINE_enum(
    "reference_columns", "auto", ["auto", "show", "hide"],
    "The PyTorch reference's ex/s, ratio and target columns; 'auto' shows them on a "
    "CPU only, the kind of device the reference was measured on.")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this file.")
_MODELS = flags.DEFINE_list("models", ["m3oe"],
                            "Registered models to measure ('all': every one).")
_DTYPES = flags.DEFINE_list("dtypes", ["float32"],
                            "Compute dtypes (config.model.dtype) to measure M3oE in, each "
                            "batch size in every dtype in turn: float32, bfloat16.")

_REFERENCE_ROOT = flags.DEFINE_string(
    "reference_root", os.environ.get("M3OE_ROOT"),
    "A checkout of the authors' PyTorch M3oE (default $M3OE_ROOT). Given, every round "
    "times ours, then theirs through --reference_harness, for each batch size in turn.")
_REFERENCE_PYTHON = flags.DEFINE_string(
    "reference_python", os.environ.get("M3OE_REFERENCE_PYTHON", sys.executable),
    "The interpreter (with torch) that runs the harness (default $M3OE_REFERENCE_PYTHON).")
_REFERENCE_HARNESS = flags.DEFINE_string(
    "reference_harness",
    str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "peer" / "microbench.py"),
    "The reference's timing harness (default ../shared/peer/microbench.py from the repo).")
_REFERENCE_THREADS = flags.DEFINE_integer("reference_threads", 2, "torch threads.")
_REFERENCE_STEPS = flags.DEFINE_integer(
    "reference_steps", 10,
    "Steps per timed run of the reference (the harness's default): on random labels its "
    "Adam at lr 1e-2 slows down over hundreds of steps (at batch 256, from ~10k to under "
    "1k examples/s by step ~400), so its runs are not stretched to --examples_per_run.")
_ROUNDS = flags.DEFINE_integer("rounds", 3,
                               "With --reference_root: rounds of ours-then-theirs.")

# Shown when the reference is not run alongside (--reference_root).
REFERENCE_TRAIN = {256: 17_000, 4096: 34_500, 40960: 27_700}  # examples/s, PyTorch, 2 cores
REFERENCE_EVAL = {4096: 99_000}
TARGET_TRAIN = {256: 4.0, 4096: 2.0, 40960: 2.0}
TARGET_EVAL = 4.0


def _flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0] if analysis else {}
  return float(analysis["flops"]) if analysis and "flops" in analysis else None


def _lookups(model, params, batch):
  """The `Embeddings` module's output [B, F] for `batch`."""
  return model.apply({"params": params}, batch["sparse"], batch["dense"],
                     method=lambda m, sparse, dense: m.embedding(sparse, dense))


@jax.custom_vjp
def _as_lookup(tables, embedded):
  """`embedded`, as if looked up from `tables`."""
  return embedded


def _as_lookup_fwd(tables, embedded):
  return embedded, tables


def _as_lookup_bwd(tables, g):
  # Using g keeps its computation (the first layers' input gradients, which real
  # lookups need too) in the program; summing it costs far less than the
  # scatter-adds it replaces.
  total = jnp.sum(g)
  return jax.tree.map(lambda t: jnp.zeros_like(t).at[0, 0].set(total), tables), None


_as_lookup.defvjp(_as_lookup_fwd, _as_lookup_bwd)


def _without_lookups(model_step):
  """`model_step` as (state, batch, embedded) -> (state, metrics), in which the
  `Embeddings` module returns `embedded` instead of looking it up."""

  def step_fn(state, batch, embedded):

    def interceptor(next_fun, args, kwargs, context):
      if isinstance(context.module, Embeddings) and context.method_name == "__call__":
        return _as_lookup(context.module.variables["params"], embedded)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      return model_step(state, batch)

  return step_fn


def _check_same_loss(full, without, lookups, state, batch) -> None:
  """Asserts that both compiled steps give the same loss on `batch`, with
  unit-scale tables so that a wrong `embedded` would show. The steps donate, so
  each gets its own copy of the state."""
  tables = jax.tree.map(lambda t: jax.random.normal(jax.random.key(1), t.shape, t.dtype),
                        state.params["embedding"])
  state = state.replace(params={**state.params, "embedding": tables})
  embedded = lookups(state.params, batch)
  full_loss = full(jax.tree.map(jnp.copy, state), batch)[1]["loss"]
  without_loss = without(jax.tree.map(jnp.copy, state), batch, embedded)[1]["loss"]
  np.testing.assert_allclose(
      float(without_loss), float(full_loss), rtol=1e-5,
      err_msg="the step without lookups computes a different loss than the full step")


def prepare_train(config, schema, batch_size: int, examples: int,
                  embedding_share: bool = False) -> dict:
  """The compiled train step for `batch_size` and `runs`: name -> a callable that
  runs one timed run (`steps` steps) of the full step (and, with
  `embedding_share`, of the step without lookups), threading the donated state."""
  model = build_model(config.model, schema)
  variables = init_variables(model, schema, jax.random.key(0))
  params = variables["params"]
  optimizers = optim.make_optimizers(config.optimizer, params)
  state = step.create_train_state(variables, optimizers)
  batches = random_batches(schema, batch_size, 4)
  loss = losses.resolve(config.optimizer.train_loss, schema.num_domains, schema.num_tasks)
  model_step = step.make_model_step(model, optimizers, loss, schema.num_domains)
  start = time.perf_counter()
  compiled = jax.jit(model_step, donate_argnums=0).lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - start
  loops = {"full": (compiled, [(b,) for b in batches])}
  if embedding_share:
    lookups = jax.jit(functools.partial(_lookups, model))
    embedded = [lookups(params, b) for b in batches]
    without = jax.jit(_without_lookups(model_step), donate_argnums=0).lower(
        state, batches[0], embedded[0]).compile()
    _check_same_loss(compiled, without, lookups, state, batches[0])
    loops["without_lookups"] = (without, list(zip(batches, embedded)))
  steps = max(3, examples // batch_size)
  holder = {"state": state}

  def run_once(compiled_step, inputs):
    s = holder["state"]
    for i in range(steps):
      s, out = compiled_step(s, *inputs[i % len(inputs)])
    jax.block_until_ready(out["loss"])
    holder["state"] = s

  runs = {name: functools.partial(run_once, *loop) for name, loop in loops.items()}
  for run in runs.values():
    run()  # warm-up
  return {"batch_size": batch_size, "compile_s": compile_s, "compiled": compiled,
          "loops": loops, "runs": runs, "steps": steps}


def time_prepared(prepared: dict, repeats: int) -> dict[str, list[float]]:
  """Examples/s of `repeats` timed runs of each of `prepared`'s runs, alternating,
  so that drift affects them alike."""
  rates = {name: [] for name in prepared["runs"]}
  for _ in range(repeats):
    for name, run in prepared["runs"].items():
      rates[name] += time_runs(run, prepared["steps"] * prepared["batch_size"], 1)
  return rates


def train_result(prepared: dict, rates: dict[str, list[float]]) -> dict:
  batch_size = prepared["batch_size"]
  flops = _flops(prepared["compiled"])
  median = statistics.median(rates["full"])
  result = {"batch_size": batch_size, "compile_s": prepared["compile_s"],
            "median_examples_per_s": median, "min": min(rates["full"]),
            "max": max(rates["full"]), "peak_memory_bytes": peak_memory_bytes(),
            "step_flops": flops,
            "achieved_flops_per_s": flops * median / batch_size if flops else None}
  if "without_lookups" in rates:
    step_s = {name: statistics.median(batch_size / r for r in rs) for name, rs in rates.items()}
    result.update(median_step_s=step_s["full"],
                  without_lookups_median_step_s=step_s["without_lookups"],
                  embedding_share=1 - step_s["without_lookups"] / step_s["full"],
                  without_lookups_step_flops=_flops(prepared["loops"]["without_lookups"][0]))
  return result


def bench_train(config, schema, batch_size: int, repeats: int, examples: int,
                embedding_share: bool = False) -> dict:
  prepared = prepare_train(config, schema, batch_size, examples, embedding_share)
  return train_result(prepared, time_prepared(prepared, repeats))


def measure_train_throughput(config: ml_collections.ConfigDict, batch_size: int,
                             schema: FeatureSchema | None = None, repeats: int = 3,
                             examples: int = 100_000) -> float:
  """Median training examples/s of the jitted step for `config`'s model."""
  if schema is None:
    from m3oe_jax.data import load_dataset
    schema = load_dataset(config.data).schema
  return bench_train(config, schema, batch_size, repeats, examples)["median_examples_per_s"]


def prepare_eval(config, schema, batch_size: int, examples: int) -> dict:
  """The compiled eval step for `batch_size`, in `prepare_train`'s form."""
  model = build_model(config.model, schema)
  params = init_variables(model, schema, jax.random.key(0))
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
  return {"batch_size": batch_size, "compile_s": compile_s, "compiled": compiled,
          "runs": {"full": run_once}, "steps": steps}


def eval_result(prepared: dict, rates: dict[str, list[float]]) -> dict:
  rates = rates["full"]
  return {"batch_size": prepared["batch_size"], "compile_s": prepared["compile_s"],
          "median_examples_per_s": statistics.median(rates), "min": min(rates),
          "max": max(rates), "peak_memory_bytes": peak_memory_bytes()}


def bench_eval(config, schema, batch_size: int, repeats: int, examples: int) -> dict:
  prepared = prepare_eval(config, schema, batch_size, examples)
  return eval_result(prepared, time_prepared(prepared, repeats))


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


def parameter_count(config, schema) -> int:
  """Parameters without the embedding tables."""
  model = build_model(config.model, schema)
  shapes = jax.eval_shape(lambda: init_variables(model, schema, jax.random.key(0)))["params"]
  return sum(int(np.prod(leaf.shape)) for scope, tree in shapes.items()
             if scope not in type(model).TABLE_SCOPES for leaf in jax.tree.leaves(tree))


def compare_models(names, schema, batch_sizes, eval_sizes, repeats, examples) -> list[dict]:
  """Every model measured in this run, one row per model."""
  rows = []
  for name in names:
    config = reference_config(name)
    row = {"model": name, "params": parameter_count(config, schema)}
    for b in batch_sizes:
      r = bench_train(config, schema, b, repeats, examples)
      row[f"train_{b}"] = r["median_examples_per_s"]
      row["flops_per_example"] = r["step_flops"] / b if r["step_flops"] else None
      row[f"gflops_{b}"] = (r["achieved_flops_per_s"] or 0) / 1e9
    for b in eval_sizes:
      row[f"eval_{b}"] = bench_eval(config, schema, b, repeats, examples)["median_examples_per_s"]
    rows.append(row)
    print(f"  measured {name}", flush=True)
  base = next((r for r in rows if r["model"] == "m3oe"), None)
  sizes = [f"train_{b}" for b in batch_sizes] + [f"eval_{b}" for b in eval_sizes]
  print("| model | params (no emb.) | train MFLOP/example | "
        + " | ".join(s.replace("_", " ") + " ex/s" for s in sizes)
        + " | " + " | ".join(f"GFLOP/s train {b}" for b in batch_sizes)
        + (" | train vs M3oE" if base else "") + " |")
  print("|---" * (3 + len(sizes) + len(batch_sizes) + bool(base)) + "|")
  for r in rows:
    cells = [r["model"], f"{r['params']:,}", f"{(r['flops_per_example'] or 0) / 1e6:.2f}"]
    cells += [f"{r[s]:,.0f}" for s in sizes] + [f"{r[f'gflops_{b}']:.1f}" for b in batch_sizes]
    if base:
      cells.append(" / ".join(f"{r[f'train_{b}'] / base[f'train_{b}']:.2f}x"
                              for b in batch_sizes))
    print("| " + " | ".join(cells) + " |")
  return rows


def side_by_side(config, schema, train_sizes, eval_sizes, dtypes, rounds: int, repeats: int,
                 examples: int, reference: dict) -> dict:
  """Ours and the PyTorch reference (`reference`: the keyword arguments of
  `run_reference_harness` other than mode, batch size, steps and repeats),
  alternating: each round measures the 2048^2 matmul, then for each (kind, batch
  size) ours in every dtype (`repeats` timed runs) and then theirs (`repeats` timed
  runs, in one harness subprocess). Medians over all rounds."""
  prepared = {}
  for kind, sizes in (("train", train_sizes), ("eval", eval_sizes)):
    for b in sizes:
      for dtype in dtypes:
        config.model.dtype = dtype
        prepared[kind, b, dtype] = (prepare_train(config, schema, b, examples) if kind == "train"
                                    else prepare_eval(config, schema, b, examples))
  ours = {key: {"full": []} for key in prepared}
  ours_rounds = {key: [] for key in prepared}
  theirs = {(kind, b): [] for kind, b, _ in prepared}
  peaks = []
  for r in range(rounds):
    peaks.append(matmul_flops_per_s())
    print(f"round {r + 1}/{rounds}: 2048^2 matmul {peaks[-1] / 1e9:.1f} GFLOP/s", flush=True)
    for kind, b in theirs:
      cells = []
      for dtype in dtypes:
        rates = time_prepared(prepared[kind, b, dtype], repeats)["full"]
        ours[kind, b, dtype]["full"] += rates
        ours_rounds[kind, b, dtype].append(statistics.median(rates))
        cells.append(f"ours {dtype} {ours_rounds[kind, b, dtype][-1]:,.0f}")
      row = run_reference_harness(mode=kind, batch_size=b, repeats=repeats, **reference)
      theirs[kind, b].append(row["ex_per_s_median"])
      print(f"  {kind} {b}: " + ", ".join(cells) + f", theirs {row['ex_per_s_median']:,.0f} "
            f"examples/s", flush=True)
  peak = statistics.median(peaks)
  results = {"matmul_flops_per_s": peak, "matmul_flops_per_s_rounds": peaks, "rounds": rounds,
             "train": [], "eval": []}
  for (kind, b, dtype), p in prepared.items():
    r = (train_result if kind == "train" else eval_result)(p, ours[kind, b, dtype])
    ref = statistics.median(theirs[kind, b])
    per_round = [o / t for o, t in zip(ours_rounds[kind, b, dtype], theirs[kind, b])]
    r.update(dtype=dtype, reference_examples_per_s=ref, reference_rounds=theirs[kind, b],
             rounds=ours_rounds[kind, b, dtype], ratio=r["median_examples_per_s"] / ref,
             ratio_min=min(per_round), ratio_max=max(per_round),
             target=(TARGET_TRAIN.get(b) if kind == "train" else TARGET_EVAL))
    if r.get("achieved_flops_per_s"):
      r["fraction_of_matmul"] = r["achieved_flops_per_s"] / peak
    results[kind].append(r)
  print(f"\nmedians of {rounds} rounds (ours: {rounds}x{repeats} timed runs; theirs: the "
        f"medians of {rounds} harness runs of {repeats}); 2048^2 matmul {peak / 1e9:.1f} GFLOP/s")
  print(f"{'':6}{'dtype':>9} {'batch':>6} {'ours ex/s':>10} {'theirs ex/s':>11} {'ratio':>6} "
        f"{'per round':>11} {'target':>6} {'GFLOP/s':>8} {'of matmul':>9}")
  for kind in ("train", "eval"):
    for r in results[kind]:
      flops = r.get("achieved_flops_per_s")
      flop_cells = (f"{flops / 1e9:>8.1f} {r['fraction_of_matmul']:>9.0%}" if flops
                    else f"{'':>8} {'':>9}")
      print(f"{kind:6}{r['dtype']:>9} {r['batch_size']:>6} {r['median_examples_per_s']:>10,.0f} "
            f"{r['reference_examples_per_s']:>11,.0f} {r['ratio']:>6.2f} "
            f"{r['ratio_min']:>5.2f}-{r['ratio_max']:<5.2f} {r['target'] or 0:>6.1f} "
            f"{flop_cells}")
  return results


def main(argv):
  del argv
  if _MODELS.value != ["m3oe"]:
    names = sorted(MODELS) if _MODELS.value == ["all"] else _MODELS.value
    device = jax.devices()[0]
    print(f"jax {jax.__version__} on {device.device_kind} x{jax.device_count()}")
    print(f"2048^2 float32 matmul: {matmul_flops_per_s() / 1e9:.1f} GFLOP/s")
    rows = compare_models(names, MOVIELENS_SCHEMA, [int(b) for b in _BATCH_SIZES.value],
                          [int(b) for b in _EVAL_BATCH_SIZES.value], _REPEATS.value,
                          _EXAMPLES.value)
    if _JSON.value:
      with open(_JSON.value, "w") as f:
        json.dump(rows, f, indent=2)
    return
  config = reference_config()
  device = jax.devices()[0]
  if _REFERENCE_ROOT.value:
    print(f"jax {jax.__version__} on {device.device_kind} x{jax.device_count()}; reference: "
          f"{_REFERENCE_HARNESS.value} on {_REFERENCE_ROOT.value} ({_REFERENCE_PYTHON.value})")
    reference = {"python": _REFERENCE_PYTHON.value, "harness": _REFERENCE_HARNESS.value,
                 "root": _REFERENCE_ROOT.value, "threads": _REFERENCE_THREADS.value,
                 "steps": _REFERENCE_STEPS.value}
    results = side_by_side(config, MOVIELENS_SCHEMA, [int(b) for b in _BATCH_SIZES.value],
                           [int(b) for b in _EVAL_BATCH_SIZES.value], _DTYPES.value,
                           _ROUNDS.value, _REPEATS.value, _EXAMPLES.value, reference)
    results["device"] = f"{device.device_kind} x{jax.device_count()}"
    if _JSON.value:
      with open(_JSON.value, "w") as f:
        json.dump(results, f, indent=2)
    return
  show_reference = _REFERENCE_COLUMNS.value == "show" or (
      _REFERENCE_COLUMNS.value == "auto" and device.platform == "cpu")
  share = _EMBEDDING_SHARE.value
  print(f"jax {jax.__version__} on {device.device_kind} x{jax.device_count()}")
  peak = matmul_flops_per_s()
  print(f"2048^2 float32 matmul: {peak / 1e9:.1f} GFLOP/s")
  results = {"device": f"{device.device_kind} x{jax.device_count()}",
             "matmul_flops_per_s": peak, "train": [], "eval": []}
  width = 6 if len(_DTYPES.value) == 1 else 15
  header = (f"{'':{width}}{'batch':>7} {'compile s':>10} {'median ex/s':>12} {'min':>9} "
            f"{'max':>9} {'ref ex/s':>9} {'ratio':>6} {'target':>6} {'GFLOP/s':>8} "
            f"{'peak MiB':>9}" + (f" {'emb share':>9}" if share else ""))
  print(header)
  runs = [("train", functools.partial(bench_train, embedding_share=share), _BATCH_SIZES.value,
           REFERENCE_TRAIN, TARGET_TRAIN),
          ("eval", bench_eval, _EVAL_BATCH_SIZES.value, REFERENCE_EVAL,
           dict.fromkeys(REFERENCE_EVAL, TARGET_EVAL))]
  for kind, bench, sizes, references, targets in runs:
    for b, dtype in ((int(x), dtype) for x in sizes for dtype in _DTYPES.value):
      config.model.dtype = dtype
      label = kind if len(_DTYPES.value) == 1 else f"{kind} {dtype}"
      r = bench(config, MOVIELENS_SCHEMA, b, _REPEATS.value, _EXAMPLES.value)
      r["dtype"] = dtype
      ref = references.get(b) if show_reference else None
      r["reference_examples_per_s"] = ref
      r["ratio"] = r["median_examples_per_s"] / ref if ref else None
      results[kind].append(r)
      if show_reference:
        reference_cells = f"{ref or 0:>9,} {(r['ratio'] or 0):>6.2f} {targets.get(b, 0):>6.1f}"
      else:
        reference_cells = f"{'':>9} {'':>6} {'':>6}"
      flops = r.get("achieved_flops_per_s")
      line = (f"{label:{width}}{b:>7} {r['compile_s']:>10.2f} "
              f"{r['median_examples_per_s']:>12,.0f} "
              f"{r['min']:>9,.0f} {r['max']:>9,.0f} {reference_cells} "
              f"{f'{flops / 1e9:.1f}' if flops else '':>8} "
              f"{r['peak_memory_bytes'] / 2**20:>9.0f}")
      if share:
        cell = f"{r['embedding_share']:.1%}" if "embedding_share" in r else ""
        line += f" {cell:>9}"
      print(line)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
