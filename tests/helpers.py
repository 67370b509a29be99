"""Small shared builders for the tests."""

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
