"""M3oE against vectors produced by the authors' PyTorch code.

Any npz in the same format (other numbers of domains, tasks, experts, layers or
features) goes through unchanged: set M3OE_GOLDEN=/path/to/file.npz.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from m3oe_jax import losses
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.models import build_model, export_weights, import_weights, init_params


@pytest.fixture(scope="module")
def golden(golden_path):
  with np.load(golden_path) as f:
    return {k: f[k] for k in f.files}


def _model_and_params(golden):
  schema = FeatureSchema(
      sparse_names=[str(n) for n in golden["config/sparse_names"]],
      vocab_sizes=golden["config/vocabs"].tolist(),
      dense_names=[f"dense{i}" for i in range(int(golden["config/num_dense"]))],
      domain_names=[str(d) for d in range(int(golden["config/D"]))],
      task_names=[str(t) for t in range(int(golden["config/T"]))],
  )
  config = ml_collections.ConfigDict(dict(
      name="m3oe", embed_dim=int(golden["config/emb"]),
      fcn_dims=golden["config/fcn_dims"].tolist(),
      num_shared_experts=int(golden["config/E"]), arch_init=1.0,
      gate_stop_gradient=True, embed_init_std=1e-4))
  model = build_model(config, schema)
  template = jax.eval_shape(lambda: init_params(model, schema, jax.random.key(0)))
  named = {k[len("params/"):]: v for k, v in golden.items() if k.startswith("params/")}
  return model, import_weights(named, template), schema


def _batch(golden):
  return {
      "sparse": jnp.asarray(golden["inputs/sparse_ids"]),
      "dense": jnp.asarray(golden["inputs/dense"]),
      "domain": jnp.asarray(golden["inputs/domain"]),
  }


def test_probabilities_and_losses(golden):
  model, params, schema = _model_and_params(golden)
  batch = _batch(golden)
  logits, aux = jax.jit(model.apply)({"params": params}, batch)
  np.testing.assert_allclose(jax.nn.sigmoid(logits), golden["outputs/probs"], rtol=0, atol=1e-5)
  labels = jnp.asarray(golden["inputs/labels"])
  mask = jnp.ones(labels.shape[0])
  mdmt = losses.mdmt_loss(logits, labels, batch["domain"], mask, schema.num_domains)
  mean = losses.mean_loss(logits, labels, batch["domain"], mask, schema.num_domains)
  np.testing.assert_allclose(mdmt, golden["outputs/mdmt_loss"], rtol=1e-5)
  np.testing.assert_allclose(mean, golden["outputs/mean_bce"], rtol=1e-5)
  assert aux["gates"].shape == (labels.shape[0], schema.num_tasks, int(golden["config/E"]))
  np.testing.assert_allclose(aux["gates"].sum(-1), 1.0, atol=1e-6)


def test_mdmt_gradient_of_every_weight(golden):
  model, params, schema = _model_and_params(golden)
  batch = _batch(golden)
  labels = jnp.asarray(golden["inputs/labels"])
  mask = jnp.ones(labels.shape[0])

  def loss_fn(p):
    logits, _ = model.apply({"params": p}, batch)
    return losses.mdmt_loss(logits, labels, batch["domain"], mask, schema.num_domains)

  grads = export_weights(jax.jit(jax.grad(loss_fn))(params))
  expected = {k[len("grads/"):]: v for k, v in golden.items() if k.startswith("grads/")}
  assert sorted(grads) == sorted(expected)
  for name, want in expected.items():
    np.testing.assert_allclose(grads[name], want, rtol=1e-4, atol=1e-6, err_msg=name)


def test_export_round_trips_the_named_weights(golden):
  _, params, _ = _model_and_params(golden)
  exported = export_weights(params)
  for name, value in exported.items():
    np.testing.assert_array_equal(value, golden[f"params/{name}"])
