"""Mesh and shape mistakes are refused, naming the field, before anything compiles.

Runs on 8 simulated devices in a subprocess (they must exist before jax starts).
"""

import json
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import cpu_env, free_port

REPO = pathlib.Path(__file__).resolve().parents[1]

_TRY_CONFIGS = """
import json, sys, jax
from configs import synthetic
from m3oe_jax import sharding
from m3oe_jax.data import load_dataset
from m3oe_jax.trainer import Trainer

compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: compiles.append(event) if "backend_compile" in event else None)
dataset = load_dataset(synthetic.get_config("tiny").data)
outcome = {}
for name, overrides in json.loads(sys.argv[1]).items():
  config = synthetic.get_config("tiny")
  for key, value in overrides.items():
    section, field = key.split(".") if "." in key else (None, key)
    (config[section] if section else config)[field] = value
  before = len(compiles)
  try:
    Trainer(config, dataset, sharding.make_mesh(config.mesh))
    outcome[name] = {"error": None}
  except ValueError as e:
    outcome[name] = {"error": str(e), "type": type(e).__name__}
  outcome[name]["compiled"] = len(compiles) - before
print(json.dumps(outcome))
"""

CASES = {
    "axes_do_not_multiply": ({"mesh.data": 3, "mesh.model": 2}, "multiply to the device count"),
    "model_does_not_divide": ({"mesh.model": 3}, "config.mesh.model=3 does not divide"),
    "unknown_axis": ({"mesh.embedding_axis": "rows"}, "config.mesh.embedding_axis='rows'"),
    "batch_not_divisible": ({"batch_size": 100}, "config.batch_size=100 must be divisible"),
    # 132 splits over a data axis of 2, but not over the 2 x 4 devices that share the rows.
    "batch_not_divisible_by_both_axes": (
        {"batch_size": 132, "mesh.model": 4, "mesh.embedding_axis": "model"},
        "config.batch_size=132 must be divisible by the mesh's data x model = 2 x 4 = 8"),
    "eval_batch_not_divisible": ({"eval_batch_size": 510, "mesh.model": 2},
                                 "config.eval_batch_size=510"),
    "rows_not_divisible": ({"mesh.model": 8, "mesh.embedding_axis": "model",
                            "model.embed_rows_multiple": 100},
                           "config.model.embed_rows_multiple=100"),
}


@pytest.fixture(scope="module")
def outcome():
  env = cpu_env(8)
  cases = {name: overrides for name, (overrides, _) in CASES.items()}
  cases["valid_4x2"] = {"mesh.model": 2, "mesh.embedding_axis": "model"}
  # A memory budget compiles the step to measure it: shows the compile counter counts.
  cases["valid_with_budget"] = {"mesh.device_memory_budget_bytes": 1 << 40}
  out = subprocess.run([sys.executable, "-c", _TRY_CONFIGS, json.dumps(cases)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_mesh_or_shape_is_refused_before_compiling(outcome, name):
  _, message = CASES[name]
  assert outcome[name]["error"] is not None and message in outcome[name]["error"]
  assert outcome[name]["type"] == "ConfigError"
  assert outcome[name]["compiled"] == 0


def test_a_valid_mesh_builds_its_steps_without_error(outcome):
  assert outcome["valid_4x2"]["error"] is None
  assert outcome["valid_with_budget"] == {"error": None, "compiled": 1}


_PER_DEVICE_WORK = """
import json, jax
from configs import synthetic
from m3oe_jax import sharding
from m3oe_jax.data import load_dataset
from m3oe_jax.trainer import Trainer

dataset = load_dataset(synthetic.get_config("tiny").data)
report = {}
for data, model, axis in ((1, 1, ""), (8, 1, ""), (2, 4, "model"), (1, 8, "model")):
  config = synthetic.get_config("tiny")
  config.mesh.update(dict(data=data, model=model, embedding_axis=axis))
  trainer = Trainer(config, dataset,
                    sharding.make_mesh(config.mesh, jax.devices()[:data * model]))
  state, batch = trainer.abstract_state(), trainer.train_batch(0)
  train = trainer.model_step.lower(state, batch).compile()
  evaluate = trainer.eval_step.lower(state.variables(), batch).compile()
  report[f"{data}x{model}"] = {
      "train_flops": train.cost_analysis()["flops"],
      "eval_flops": evaluate.cost_analysis()["flops"],
      "rows_per_device": sorted({s.data.shape[0] for v in batch.values()
                                 for s in v.addressable_shards}),
      "batch_size": config.batch_size}
print(json.dumps(report))
"""


def test_every_device_computes_its_own_share_of_the_rows():
  """With the tables row-sharded over 'model', the dense layers are not repeated
  within a model group: on 2x4 and 1x8 every device holds 1/8 of the batch and
  does the per-device work of 8x1 data parallelism (XLA's cost analysis of the
  compiled steps), where a batch split over 'data' alone would do 4x and 8x that."""
  out = subprocess.run([sys.executable, "-c", _PER_DEVICE_WORK], cwd=REPO, env=cpu_env(8),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  one, dp = report["1x1"], report["8x1"]
  assert one["train_flops"] > 4 * dp["train_flops"]  # the tiny step is mostly per-row work
  for mesh in ("8x1", "2x4", "1x8"):
    assert report[mesh]["rows_per_device"] == [one["batch_size"] // 8], mesh
  for mesh in ("2x4", "1x8"):
    for kind in ("train_flops", "eval_flops"):
      assert report[mesh][kind] < 1.1 * dp[kind], (mesh, kind, report)


_TRY_PROCESS_MESHES = """
import json, sys, jax, ml_collections
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from m3oe_jax import sharding
outcome = {}
for data, model in ((1, 4), (2, 2), (4, 1)):
  try:
    sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, model=model,
                                                      embedding_axis="")))
    outcome[f"{data}x{model}"] = None
  except ValueError as e:
    outcome[f"{data}x{model}"] = str(e)
print(json.dumps(outcome))
"""


def test_a_model_axis_across_processes_is_refused():
  """Two processes of 2 devices: a model axis of 4 would join both processes' rows
  into one replicated batch; 2x2 and 4x1 keep each process's rows its own."""
  address = f"localhost:{free_port()}"
  procs = [subprocess.Popen([sys.executable, "-c", _TRY_PROCESS_MESHES, address, str(i)],
                            cwd=REPO, env=cpu_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    outcome = json.loads(stdout.strip().splitlines()[-1])
    assert "config.mesh.model=4 spans devices of several processes" in outcome["1x4"]
    assert outcome["2x2"] is None and outcome["4x1"] is None
