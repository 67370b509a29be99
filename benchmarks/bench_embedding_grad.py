"""The embedding table's gradient with uniform ids against heavily repeated ids.

An embedding gradient is a float32 scatter-add into the table. From jaxlib 0.10.2
through 0.11.0, XLA:GPU lowers it to a compare-and-swap loop that slows down by
orders of magnitude when many ids of a batch hit the same rows
(openxla/xla#46225); requirements.txt pins 0.10.1 for that reason. This script
shows which side of it a machine is on: the median time of the same jitted
gradient for a batch of uniform ids and for one where `--hot_share` of the ids
fall on `--hot_rows` rows, and their ratio (near 1 on CPU, TPU and unaffected
GPU builds; hundreds inside the regression).

  python benchmarks/bench_embedding_grad.py [--rows=1000000 --dim=16 --batch=65536]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

REGRESSION = ((0, 10, 2), (0, 11, 0))  # jaxlib versions, first and last


def _ids(kind: str, args, rng) -> np.ndarray:
  shape = (args.batch, args.features)
  if kind == "uniform":
    return rng.integers(0, args.rows, shape, dtype=np.int32)
  ids = rng.integers(0, args.rows, shape, dtype=np.int32)
  hot = rng.random(shape) < args.hot_share
  ids[hot] = rng.integers(0, args.hot_rows, int(hot.sum()), dtype=np.int32)
  return ids


def _median_seconds(function, *inputs, repeats: int) -> float:
  jax.block_until_ready(function(*inputs))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function(*inputs))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--dim", type=int, default=16)
  parser.add_argument("--batch", type=int, default=65536)
  parser.add_argument("--features", type=int, default=32)
  parser.add_argument("--hot_rows", type=int, default=8)
  parser.add_argument("--hot_share", type=float, default=0.9)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--json", default="")
  args = parser.parse_args()

  table = jnp.asarray(np.random.default_rng(0).normal(size=(args.rows, args.dim)),
                      jnp.float32)

  @jax.jit
  def gradient(table, ids):
    return jax.grad(lambda t: jnp.sum(jnp.take(t, ids, axis=0) ** 2))(table)

  rng = np.random.default_rng(1)
  result = {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "device": str(jax.devices()[0]), **vars(args)}
  for kind in ("uniform", "repeated"):
    ids = jax.device_put(_ids(kind, args, rng))
    result[f"{kind}_seconds"] = _median_seconds(gradient, table, ids, repeats=args.repeats)
  result["repeated_over_uniform"] = result["repeated_seconds"] / result["uniform_seconds"]
  version = tuple(int(part) for part in jaxlib.__version__.split(".")[:3])
  inside = REGRESSION[0] <= version <= REGRESSION[1]
  print(f"jaxlib {jaxlib.__version__} on {result['device']}"
        f"{' (inside the XLA:GPU scatter-add regression range)' if inside else ''}")
  print(f"embedding gradient, table {args.rows}x{args.dim}, {args.batch}x{args.features} ids: "
        f"uniform {result['uniform_seconds'] * 1e3:.2f} ms, {args.hot_share:.0%} on "
        f"{args.hot_rows} rows {result['repeated_seconds'] * 1e3:.2f} ms "
        f"({result['repeated_over_uniform']:.2f}x)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
