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
    outcome[name] = {"error": str(e)}
  outcome[name]["compiled"] = len(compiles) - before
print(json.dumps(outcome))
"""

CASES = {
    "axes_do_not_multiply": ({"mesh.data": 3, "mesh.model": 2}, "multiply to the device count"),
    "model_does_not_divide": ({"mesh.model": 3}, "config.mesh.model=3 does not divide"),
    "unknown_axis": ({"mesh.embedding_axis": "rows"}, "config.mesh.embedding_axis='rows'"),
    "batch_not_divisible": ({"batch_size": 100}, "config.batch_size=100 must be divisible"),
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
  assert outcome[name]["compiled"] == 0


def test_a_valid_mesh_builds_its_steps_without_error(outcome):
  assert outcome["valid_4x2"]["error"] is None
  assert outcome["valid_with_budget"] == {"error": None, "compiled": 1}


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
