"""Reading golden files (weights, inputs, outputs and gradients produced by the
authors' PyTorch classes) and building the model a file describes.

Files live in `tests/assets/golden/` (M3oE) and `tests/assets/golden/baselines/`;
the environment variables M3OE_GOLDEN_DIR and M3OE_BASELINE_GOLDEN_DIR point the
tests at other folders of files in the same format (M3OE_GOLDEN at one M3oE file).

The comparisons are with PyTorch's float32 arithmetic: `build` makes float32
models, and the checks run inside `exact()`, float32 matmuls at the highest
precision (GPUs and TPUs otherwise run float32 matmuls in fewer-bit passes).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re

import jax
import numpy as np

from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.models import build_model, default_model_config, import_weights, init_variables

ASSETS = pathlib.Path(__file__).resolve().parent / "assets" / "golden"
PRECISION = "highest"


@contextlib.contextmanager
def exact():
  """Float32 matmuls at the highest precision on every backend, for the block inside."""
  with jax.default_matmul_precision(PRECISION):
    yield


def lowered_matmuls(fn, *args) -> list[str]:
  """The StableHLO dot_general lines of `fn(*args)` as jit lowers it here and now."""
  text = jax.jit(fn).lower(*args).as_text()
  return [line.strip() for line in text.splitlines() if re.search(r"\bdot_general\b", line)]


def assert_float32_at_highest_precision(fn, *args) -> None:
  """Every matmul of `fn(*args)` takes float32 operands at HIGHEST precision."""
  matmuls = lowered_matmuls(fn, *args)
  assert matmuls, "no matmul found"
  for line in matmuls:
    assert "precision = [HIGHEST, HIGHEST]" in line, line
    operands = re.findall(r"tensor<([^>]*)>", line)
    assert operands and all(t.endswith("xf32") or t == "f32" for t in operands), line


def m3oe_files() -> list[pathlib.Path]:
  if os.environ.get("M3OE_GOLDEN"):
    return [pathlib.Path(os.environ["M3OE_GOLDEN"])]
  folder = pathlib.Path(os.environ.get("M3OE_GOLDEN_DIR", ASSETS))
  return sorted(folder.glob("m3oe*.npz"))


def baseline_files() -> list[pathlib.Path]:
  folder = pathlib.Path(os.environ.get("M3OE_BASELINE_GOLDEN_DIR", ASSETS / "baselines"))
  return sorted(folder.glob("*.npz"))


def load(path: pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def section(golden: dict, prefix: str) -> dict[str, np.ndarray]:
  """{name: array} of the keys under `prefix/`."""
  return {k[len(prefix) + 1:]: v for k, v in golden.items() if k.startswith(prefix + "/")}


def _tuple(value) -> tuple[int, ...]:
  return tuple(int(v) for v in np.asarray(value).ravel())


# How each model's options are read from a file's `config/` keys.
OPTIONS = {
    "m3oe": lambda c: dict(fcn_dims=_tuple(c["fcn_dims"]),
                           num_shared_experts=int(c["E"])),
    "mlp": lambda c: dict(fcn_dims=_tuple(c["fcn_dims"]),
                          reference_index_bug=bool(int(c.get("index_bug", 0)))),
    "mmoe": lambda c: dict(fcn_dims=_tuple(c["fcn_dims"]), num_experts=int(c["E"]),
                           tower_norm=str(c["tower_norm"])),
    "ple": lambda c: dict(num_levels=int(c["n_level"]),
                          num_specific_experts=int(c["n_expert_specific"]),
                          num_shared_experts=int(c["n_expert_shared"]),
                          expert_dims=_tuple(c["expert_dims"]),
                          tower_dims=_tuple(c["tower_dims"])),
    "star": lambda c: dict(fcn_dims=_tuple(c["fcn_dims"])),
}


def schema_of(golden: dict) -> FeatureSchema:
  config = section(golden, "config")
  return FeatureSchema(
      sparse_names=[str(n) for n in config["sparse_names"]],
      vocab_sizes=config["vocabs"].tolist(),
      dense_names=[f"dense{i}" for i in range(int(config["num_dense"]))],
      domain_names=[str(d) for d in range(int(config["D"]))],
      task_names=[str(t) for t in range(int(config["T"]))],
  )


def build(golden: dict, **option_overrides):
  """(model, variables with the file's weights, schema). BatchNorm statistics
  start at their initial values (mean 0, variance 1), as in the reference."""
  config = section(golden, "config")
  name = str(config.get("model", "m3oe"))
  model_config = default_model_config(name)
  model_config.dtype = "float32"
  model_config.embed_dim = int(config["emb"])
  model_config[name].update({**OPTIONS[name](config), **option_overrides})
  schema = schema_of(golden)
  model = build_model(model_config, schema)
  template = jax.eval_shape(lambda: init_variables(model, schema, jax.random.key(0)))
  variables = {"params": import_weights(section(golden, "params"), template["params"])}
  if template["batch_stats"]:
    variables["batch_stats"] = init_variables(model, schema, jax.random.key(0))["batch_stats"]
  return model, variables, schema


def batch_of(golden: dict) -> dict[str, jax.Array]:
  return {
      "sparse": np.asarray(golden["inputs/sparse_ids"]),
      "dense": np.asarray(golden["inputs/dense"]),
      "domain": np.asarray(golden["inputs/domain"]),
      "mask": np.ones(golden["inputs/domain"].shape, np.float32),
  }


def train_forward(model, variables, batch):
  """(logits, updated batch_stats) in train mode."""
  logits, mutated = model.apply(variables, batch, train=True, mutable=["batch_stats"])
  return logits[0], mutated.get("batch_stats", {})


def mdmt_loss_fn(model, variables, batch, labels, num_domains: int):
  """params -> the train-mode MDMT loss on `batch`."""
  from m3oe_jax import losses

  def loss_fn(params):
    logits, _ = train_forward(model, {**variables, "params": params}, batch)
    return losses.mdmt_loss(logits, labels, batch["domain"], batch["mask"], num_domains)

  return loss_fn


def mdmt_gradients(model, variables, batch, labels, num_domains: int) -> dict[str, np.ndarray]:
  from m3oe_jax.models import export_weights
  loss_fn = mdmt_loss_fn(model, variables, batch, labels, num_domains)
  return export_weights(jax.jit(jax.grad(loss_fn))(variables["params"]))


def check_precision_of(golden: dict) -> None:
  """The file's model, its train-mode gradient and eval-mode forward, lower to float32
  matmuls at HIGHEST precision (call inside `exact()`), and would not outside it."""
  model, variables, schema = build(golden)
  batch = batch_of(golden)
  loss_fn = mdmt_loss_fn(model, variables, batch, golden["inputs/labels"], schema.num_domains)
  assert_float32_at_highest_precision(jax.grad(loss_fn), variables["params"])
  assert_float32_at_highest_precision(lambda v: model.apply(v, batch, train=False)[0],
                                      variables)
  with jax.default_matmul_precision("default"):
    assert all("HIGHEST" not in line for line in lowered_matmuls(loss_fn, variables["params"]))


def assert_gradients_match(got: dict, want: dict) -> None:
  """|got - want| <= 1e-5 (1 + |want|) for every weight, and the same names."""
  assert sorted(got) == sorted(want)
  for name, expected in want.items():
    error = np.abs(np.asarray(got[name], np.float64) - expected)
    bound = 1e-5 * (1 + np.abs(expected))
    assert np.all(error <= bound), (
        f"{name}: gradient off by up to {error.max():.3g} (bound {bound.max():.3g})")
