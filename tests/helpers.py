"""Small shared builders for the tests."""

import json
import os
import pathlib
import socket

import jax
import ml_collections
import numpy as np

from m3oe_jax import config_utils
from m3oe_jax.data.datasets import synthetic
from m3oe_jax.models import build_model, default_model_config, init_params

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_train_config(**overrides):
  """configs/synthetic.py:tiny (3 epochs of 25 steps) with dotted-field overrides."""
  from configs import synthetic as synthetic_config  # pylint: disable=g-import-not-at-top
  config = synthetic_config.get_config("tiny")
  for field, value in overrides.items():
    config_utils.apply_override(config, field, value)
  return config


def model_config(name="m3oe", embed_dim=4, **options):
  """`config.model` selecting `name` with small M3oE-sized defaults for the tests."""
  config = default_model_config(name)
  config.embed_dim = embed_dim
  if name == "m3oe":
    config.m3oe.update(dict(fcn_dims=(16, 8, 8, 8), num_shared_experts=3))
  config[name].update({k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
  return config


def tiny_data_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      name="synthetic", seed=0, num_rows=600, num_domains=3, num_tasks=2,
      vocab_sizes=[13, 11, 5], num_dense=1, domain_skew=0.3, latent_dim=3,
      split=[0.8, 0.1, 0.1]))
  config.update(overrides)
  return config


def tiny_model_and_params(seed=0, **model_overrides):
  dataset = synthetic.make_dataset(tiny_data_config())
  model = build_model(model_config(**model_overrides), dataset.schema)
  params = init_params(model, dataset.schema, jax.random.key(seed))
  return model, params, dataset


def batch_of(dataset, n=64, split="train"):
  batch = dataset.splits[split].take(np.arange(n))
  batch["mask"] = np.ones(n, np.float32)
  return batch


def cpu_env(devices: int) -> dict:
  """The environment of a subprocess with `devices` simulated CPU devices."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  flags = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                   if not f.startswith("--xla_force_host_platform_device_count"))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  return env


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# ---------------------------------------------------------------------------
# Hand-made sweeps for the report tests: run folders written without training.

SWEEP_CONFIG = "configs/sweeps/table2.py"
SWEEP_DOMAINS = ["age_1_18", "age_25", "age_35_45_50_56"]
SWEEP_TASKS = ["click", "like"]


def sweep_pairs(domains, tasks, auc, seed):
  """Deterministic per-pair test metrics: AUC from `auc(d, t, seed)`."""
  out = {}
  for d in domains:
    for t in tasks:
      di, ti = SWEEP_DOMAINS.index(d), SWEEP_TASKS.index(t)
      out[f"{d}/{t}"] = {"auc": auc(di, ti, seed), "logloss": 0.4 + 0.01 * di + 0.02 * ti
                         + 0.001 * (seed - 2022), "count": 100 * (di + 1),
                         "positive_rate": 0.5}
  return out


def write_sweep_run(root, name, model, kind, domains, tasks, seed, auc, data="movielens",
                    finished=True):
  """A run's folder as the sweep leaves it (finished: metrics.json and
  metrics.jsonl; else a checkpoints folder only); returns its sweep.json entry."""
  workdir = root / name
  workdir.mkdir(parents=True)
  d_names = [SWEEP_DOMAINS[i] for i in domains] or SWEEP_DOMAINS
  t_names = [SWEEP_TASKS[i] for i in tasks] or SWEEP_TASKS
  variant = None if not domains and not tasks else {"domains": d_names, "tasks": t_names}
  if finished:
    pairs = sweep_pairs(d_names, t_names, auc, seed)
    (workdir / "metrics.json").write_text(json.dumps({
        "test": {"pairs": pairs, "mean_auc": float(np.mean([m["auc"] for m in pairs.values()]))},
        "model": model, "seed": seed, "data": data, "domains": d_names, "tasks": t_names,
        "variant": variant, "best_epoch": 1}))
    lines = [{"epoch": e, "step": 10 * e, "validation": {"pairs": pairs},
              "diagnostics": {}} for e in (0, 1, 1)]
    (workdir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
  else:
    (workdir / "checkpoints").mkdir()
  return {"name": name, "model": model, "kind": kind, "domains": list(domains),
          "tasks": list(tasks), "seed": seed, "workdir": name, "status": "pending"}


def mtl_auc(d, t, seed):
  """The test AUC of the hand-made MTL runs at (domain, task, seed)."""
  return 0.70 + 0.01 * d + 0.002 * t + 0.003 * (seed - 2022)


def m3oe_auc(d, t, seed):
  """The test AUC of the hand-made M3oE runs at (domain, task, seed)."""
  return 0.75 + 0.01 * d + 0.002 * t + 0.004 * (seed - 2022) ** 2


def make_sweep(root, data="movielens"):
  """A hand-made MovieLens sweep in `root`: MMoE-MTL and M3oE-MDMT over three
  seeds, MLP per (domain, task) with one failed, one running and one missing run."""
  runs = []
  for seed in (2022, 2023, 2024):
    for d in range(3):
      runs.append(write_sweep_run(root, f"mmoe-mtl/d{d}/seed{seed}", "mmoe", "mtl", (d,), (),
                                  seed, mtl_auc, data))
    runs.append(write_sweep_run(root, f"m3oe-mdmt/all/seed{seed}", "m3oe", "mdmt", (), (), seed,
                                m3oe_auc, data))
  # MLP per (d, t), seed 2022 only: complete except one pair, failed; one running,
  # one missing (never started).
  for d in range(3):
    for t in range(2):
      name = f"mlp-single/d{d}t{t}/seed2022"
      if (d, t) == (2, 1):
        runs.append({"name": name, "model": "mlp", "kind": "single", "domains": [d],
                     "tasks": [t], "seed": 2022, "workdir": name, "status": "failed",
                     "error": "ValueError: boom"})
      elif (d, t) == (2, 0):
        runs.append({"name": name, "model": "mlp", "kind": "single", "domains": [d],
                     "tasks": [t], "seed": 2022, "workdir": name, "status": "pending"})
      else:
        runs.append(write_sweep_run(root, name, "mlp", "single", (d,), (t,), 2022, mtl_auc, data,
                                    finished=(d, t) != (1, 1)))
  (root / "sweep.json").write_text(json.dumps({"config": "hand-made", "runs": runs}))
  return runs
