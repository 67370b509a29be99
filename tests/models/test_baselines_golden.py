"""The baselines (MLP, MMoE, PLE, STAR) against vectors produced by the authors'
own PyTorch classes.

One test per file found in tests/assets/golden/baselines (or the folder
M3OE_BASELINE_GOLDEN_DIR): the model is built from the file's `config/` keys, its
weights loaded through `import_weights`, and checked for train-mode
probabilities, the per-(domain, task) losses, every gradient, and for BatchNorm
models the updated running statistics and the eval-mode probabilities, at the
tolerances the files' README gives. Any file in the same format (other numbers
of domains, tasks, experts, widths or dense features) goes through unchanged.
Float32 at the highest matmul precision, so the checks hold on GPU and TPU too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m3oe_jax import losses
from m3oe_jax.models import export_weights, import_weights
from tests import golden as golden_files

FILES = golden_files.baseline_files()


def test_golden_baseline_files_are_found():
  assert FILES, "no golden file found (tests/assets/golden/baselines or M3OE_BASELINE_GOLDEN_DIR)"


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_golden_baseline(path):
  golden = golden_files.load(path)
  with golden_files.exact():
    golden_files.check_precision_of(golden)
    _check_file(golden)
    if "outputs/probs_fixed" in golden:  # the MLP's index bug: the intended model too
      _check_file(golden, fixed=True)


def _check_file(golden, fixed: bool = False):
  suffix = "_fixed" if fixed else ""
  overrides = {"reference_index_bug": False} if fixed else {}
  model, variables, schema = golden_files.build(golden, **overrides)
  batch = golden_files.batch_of(golden)
  labels = jnp.asarray(golden["inputs/labels"])

  logits, batch_stats = golden_files.train_forward(model, variables, batch)
  np.testing.assert_allclose(jax.nn.sigmoid(logits), golden[f"outputs/probs{suffix}"],
                             rtol=0, atol=1e-5, err_msg="train-mode probabilities")
  mdmt = losses.mdmt_loss(logits, labels, batch["domain"], batch["mask"], schema.num_domains)
  np.testing.assert_allclose(mdmt, golden[f"outputs/mdmt_loss{suffix}"], rtol=0, atol=1e-5)
  if not fixed:
    groups = losses.group_bce(logits, labels, batch["domain"], batch["mask"], schema.num_domains)
    np.testing.assert_allclose(groups, golden["outputs/group_bce"], rtol=0, atol=1e-5)
    mean = losses.mean_loss(logits, labels, batch["domain"], batch["mask"], schema.num_domains)
    np.testing.assert_allclose(mean, golden["outputs/mean_bce"], rtol=0, atol=1e-5)

  grads = golden_files.mdmt_gradients(model, variables, batch, labels, schema.num_domains)
  golden_files.assert_gradients_match(grads, golden_files.section(golden, f"grads{suffix}"))

  expected_stats = golden_files.section(golden, "batch_stats")
  assert sorted(export_weights(batch_stats)) == sorted(expected_stats)
  if expected_stats:
    for name, value in export_weights(batch_stats).items():
      np.testing.assert_allclose(value, expected_stats[name], rtol=0, atol=1e-5, err_msg=name)
    stats = import_weights(expected_stats, variables["batch_stats"])
    eval_logits, _ = model.apply({**variables, "batch_stats": stats}, batch, train=False)
    np.testing.assert_allclose(jax.nn.sigmoid(eval_logits), golden["outputs/probs_eval"],
                               rtol=0, atol=1e-5, err_msg="eval-mode probabilities")
