"""The reference model, data and timing helpers the benchmarks share.

No flags are defined here, so every benchmark script can import this module and
still define its own flags.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time

import jax
import ml_collections
import numpy as np

from m3oe_jax.config_utils import add_paper_training
from m3oe_jax.data.schema import FeatureSchema

MOVIELENS_SCHEMA = FeatureSchema(
    sparse_names=["user_id", "movie_id", "gender", "occupation", "zip", "genre", "domain"],
    vocab_sizes=[6040, 3706, 2, 21, 3439, 18, 3],
    dense_names=["age"],
    domain_names=["0", "1", "2"],
    task_names=["click", "like"],
)


def reference_config(model: str = "m3oe") -> ml_collections.ConfigDict:
  """The paper's model and optimizer sections for `model`: M3oE as in the authors'
  code, a baseline at its spec defaults with the baselines' training setup."""
  config = ml_collections.ConfigDict()
  add_paper_training(config, model)
  config.model.embed_rows_multiple = 1  # the spec's unpadded tables
  config.optimizer.arch_every_steps = 1
  return ml_collections.ConfigDict({"model": config.model, "optimizer": config.optimizer})


def random_rows(schema: FeatureSchema, num_rows: int,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Uniform random rows of `schema` (ids within each vocabulary), as host arrays."""
  domain = rng.integers(0, schema.num_domains, num_rows).astype(np.int32)
  sparse = np.stack([rng.integers(0, v, num_rows) for v in schema.vocab_sizes], 1)
  if "domain" in schema.sparse_names:
    sparse[:, schema.sparse_names.index("domain")] = domain
  return {
      "sparse": sparse.astype(np.int32),
      "dense": rng.random((num_rows, schema.num_dense), np.float32),
      "domain": domain,
      "labels": rng.integers(0, 2, (num_rows, schema.num_tasks)).astype(np.float32),
  }


def random_batches(schema: FeatureSchema, batch_size: int, count: int, seed: int = 0):
  """`count` random batches on the default device."""
  rng = np.random.default_rng(seed)
  return [jax.device_put({**random_rows(schema, batch_size, rng),
                          "mask": np.ones(batch_size, np.float32)})
          for _ in range(count)]


def peak_memory_bytes() -> int:
  """Peak device memory where the backend reports it, else the process's max RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_runs(run_once, examples_per_run: int, repeats: int) -> list[float]:
  """Examples/s of each of `repeats` calls of `run_once`."""
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    run_once()
    rates.append(examples_per_run / (time.perf_counter() - start))
  return rates


def run_reference_harness(python: str, harness: str, root: str, mode: str, batch_size: int,
                          steps: int, repeats: int, threads: int = 2) -> dict:
  """One run of the PyTorch reference's timing harness (`harness`, run by the
  interpreter `python` on the authors' checkout `root`) in a subprocess: its JSON
  row for `mode` ('train', 'trainer' or 'eval') at `batch_size`, with
  `ex_per_s_median` over `repeats` timed runs of `steps` steps each."""
  cmd = [python, harness, "--m3oe_root", root, "--mode", mode, "--batch_size", str(batch_size),
         "--steps", str(steps), "--repeats", str(repeats), "--warmup", str(min(5, steps)),
         "--threads", str(threads)]
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])
