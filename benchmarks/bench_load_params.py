"""Peak host memory of loading a checkpoint's variables onto one device:
`params_io.load_params` (`params` and `batch_stats` only, each chunk
decompressed straight into its array) against orbax's partial restore of the
same arrays (`load_params` with `shardings`, which goes through orbax) and
against restoring the whole train state (parameters plus both Adam moments).

    python benchmarks/bench_load_params.py --workdir=/tmp/bench_load --rows=2000000

Saves one checkpoint of the tiny synthetic M3oE with a `--rows`-row embedding
table of width `--embed_dim`, then loads it in three fresh processes and prints,
as the last line, JSON: the variables' and the train state's bytes and each
load's peak resident memory above the process's resident memory just before
the load (Linux: VmHWM after resetting it through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _rss() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _peak() -> int:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tree_bytes(tree) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def save(workdir: str, rows: int, embed_dim: int) -> dict:
  sys.path.insert(0, str(REPO))
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from m3oe_jax import checkpoint, sharding  # pylint: disable=g-import-not-at-top
  from m3oe_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
  from m3oe_jax.trainer import Trainer  # pylint: disable=g-import-not-at-top
  config = synthetic.get_config("tiny")
  config.data.vocab_sizes = (rows, 10)
  config.model.embed_dim = embed_dim
  dataset = load_dataset(config.data)
  trainer = Trainer(config, dataset, sharding.make_mesh(config.mesh))
  state = trainer.initial_state(0)
  checkpoint.CheckpointStore(workdir).save("best", state, checkpoint.Progress(), config,
                                           dataset.schema)
  return {"variable_bytes": _tree_bytes(state.variables()), "state_bytes": _tree_bytes(state)}


def load(workdir: str, mode: str) -> dict:
  sys.path.insert(0, str(REPO))
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from m3oe_jax import checkpoint, params_io  # pylint: disable=g-import-not-at-top
  jax.devices()
  before = _rss()
  exact = _reset_peak()
  if mode in ("load_params", "orbax_partial"):
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    on_one_device = lambda tree: jax.tree.map(lambda _: device, tree)
    variables, _, _ = params_io.load_params(
        workdir, "best", shardings=on_one_device if mode == "orbax_partial" else None)
    jax.block_until_ready(variables)
    loaded = _tree_bytes(variables)
  else:  # the whole train state onto one device, then keep only the variables
    store = checkpoint.CheckpointStore(workdir, read_only=True)
    step = store.best.latest_step()
    metadata = store.best.item_metadata(step)["state"]
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), metadata)
    restored = store.best.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    state = restored["state"]
    jax.block_until_ready(state)
    ml_collections.ConfigDict(restored["meta"]["config"])
    loaded = _tree_bytes(state)
  peak = _peak()
  return {"peak_bytes": max(0, peak - before), "loaded_bytes": loaded, "exact_peak": exact}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--rows", type=int, default=2_000_000)
  parser.add_argument("--embed_dim", type=int, default=64)
  parser.add_argument("--mode", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.mode:
    result = save(args.workdir, args.rows, args.embed_dim) if args.mode == "save" else load(
        args.workdir, args.mode)
    print(json.dumps(result))
    return

  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}

  def run(mode):
    out = subprocess.run([sys.executable, __file__, f"--workdir={args.workdir}",
                          f"--rows={args.rows}", f"--embed_dim={args.embed_dim}",
                          f"--mode={mode}"], check=True, capture_output=True, text=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])

  report = run("save")
  for mode in ("load_params", "orbax_partial", "full_restore"):
    result = run(mode)
    report[f"{mode}_peak_bytes"] = result["peak_bytes"]
    report[f"{mode}_loaded_bytes"] = result["loaded_bytes"]
    report["exact_peak"] = result["exact_peak"]
  for key in ("load_params", "orbax_partial", "full_restore"):
    print(f"{key:>13}: peak {report[f'{key}_peak_bytes'] / 2**20:8.1f} MiB "
          f"({report[f'{key}_peak_bytes'] / report['variable_bytes']:.2f}x the variables' "
          f"{report['variable_bytes'] / 2**20:.1f} MiB; train state "
          f"{report['state_bytes'] / 2**20:.1f} MiB)")
  print(json.dumps(report))


if __name__ == "__main__":
  main()
