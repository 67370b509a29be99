"""M3oE against vectors produced by the authors' PyTorch code.

One test per file and check: every `m3oe*.npz` in tests/assets/golden (the
reference shape, one domain, one task), or the folder M3OE_GOLDEN_DIR, or the
single file M3OE_GOLDEN. Any file in the same format (other numbers of domains,
tasks, experts, layers or features) goes through unchanged. Float32 at the
highest matmul precision, so the checks hold on GPU and TPU too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m3oe_jax import losses
from m3oe_jax.models import export_weights
from tests import golden as golden_files

FILES = golden_files.m3oe_files()


@pytest.fixture(autouse=True)
def _float32_at_highest_precision():
  with golden_files.exact():
    yield


@pytest.fixture(scope="module", params=FILES, ids=[f.stem for f in FILES])
def golden(request):
  if not request.param.exists():
    pytest.fail(f"golden file {request.param} not found")
  return golden_files.load(request.param)


def test_golden_files_are_found():
  assert FILES, "no m3oe*.npz golden file found (tests/assets/golden or M3OE_GOLDEN_DIR)"


def test_golden_checks_run_in_float32_at_highest_precision(golden):
  golden_files.check_precision_of(golden)


def test_golden_probabilities_and_losses(golden):
  model, variables, schema = golden_files.build(golden)
  batch = golden_files.batch_of(golden)
  logits, aux = jax.jit(model.apply)(variables, batch)
  np.testing.assert_allclose(jax.nn.sigmoid(logits), golden["outputs/probs"], rtol=0, atol=1e-5)
  labels = jnp.asarray(golden["inputs/labels"])
  mask = batch["mask"]
  mdmt = losses.mdmt_loss(logits, labels, batch["domain"], mask, schema.num_domains)
  mean = losses.mean_loss(logits, labels, batch["domain"], mask, schema.num_domains)
  np.testing.assert_allclose(mdmt, golden["outputs/mdmt_loss"], rtol=1e-5)
  np.testing.assert_allclose(mean, golden["outputs/mean_bce"], rtol=1e-5)
  assert aux["gates"].shape == (labels.shape[0], schema.num_tasks, int(golden["config/E"]))
  np.testing.assert_allclose(aux["gates"].sum(-1), 1.0, atol=1e-6)


def test_golden_mdmt_gradient_of_every_weight(golden):
  model, variables, schema = golden_files.build(golden)
  batch = golden_files.batch_of(golden)
  grads = golden_files.mdmt_gradients(model, variables, batch,
                                      jnp.asarray(golden["inputs/labels"]), schema.num_domains)
  expected = golden_files.section(golden, "grads")
  assert sorted(grads) == sorted(expected)
  for name, want in expected.items():
    np.testing.assert_allclose(grads[name], want, rtol=1e-4, atol=1e-6, err_msg=name)


def test_golden_export_round_trips_the_named_weights(golden):
  _, variables, _ = golden_files.build(golden)
  exported = export_weights(variables["params"])
  for name, value in exported.items():
    np.testing.assert_array_equal(value, golden[f"params/{name}"])
