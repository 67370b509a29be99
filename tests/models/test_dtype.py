"""`config.model.dtype`: bfloat16 compute with float32 parameters, for every model.

For each registered model (and the variants with code of their own: STAR's
original variant, M2M's transformer backbone with generated "swr" weights), one
train-mode forward and backward pass in bfloat16 from the float32 run's
parameters must: give float32 logits and probabilities close to float32's, keep
every parameter, gradient and BatchNorm statistic float32, run (nearly) every
matmul FLOP in bfloat16, and give gradients that point where float32's do.
"""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from m3oe_jax import losses
from m3oe_jax.data import load_dataset
from m3oe_jax.errors import ConfigError
from m3oe_jax.models import MODELS, build_model, default_model_config, init_variables
from tests import contract_run

CASES = [(name, {}) for name in sorted(MODELS)] + [
    ("star", {"variant": "original", "norm_stats": "domain"}),
    ("m2m", {"backbone": "field_transformer", "meta_weights": "swr"}),
]
# Largest |p_bf16 - p_f32| allowed for a probability after one forward pass: bfloat16
# keeps 8 significant bits, ~0.4% relative per rounding (measured up to ~0.003 here).
PROBABILITY_TOLERANCE = 0.02
# Share of the matmul FLOPs allowed in float32 (tiny products of weights alone, such as
# AdaTT's native-expert weights, may stay float32).
FLOAT32_MATMUL_SHARE = 0.01


def _matmuls(jaxpr, found: list) -> list:
  """(operand dtypes, FLOPs) of every dot_general in `jaxpr`, nested jaxprs included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs, rhs = eqn.invars
      depth = int(np.prod([lhs.aval.shape[i] for i in contracting]))
      flops = 2 * depth * int(np.prod(eqn.outvars[0].aval.shape))
      found.append(({str(lhs.aval.dtype), str(rhs.aval.dtype)}, flops))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          _matmuls(sub.jaxpr, found)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          _matmuls(sub, found)
  return found


@pytest.fixture(scope="module", params=CASES, ids=[
    name + "".join(f"-{v}" for v in options.values()) for name, options in CASES])
def runs(request):
  """{dtype: (model, logits, gradients, new batch_stats)} from the same parameters."""
  name, options = request.param
  config = contract_run.tiny_config(name)
  config.model[name].update(options)
  dataset = load_dataset(config.data)
  batch = dataset.splits["train"].take(np.arange(64))
  batch["mask"] = (np.arange(64) < 60).astype(np.float32)  # 4 padding rows
  variables = None
  out = {}
  for dtype in ("float32", "bfloat16"):
    config.model.dtype = dtype
    model = build_model(config.model, dataset.schema)
    if variables is None:
      variables = init_variables(model, dataset.schema, jax.random.key(0))

    def loss_of(params, model=model):
      (logits, _), mutated = model.apply(
          {"params": params, "batch_stats": variables["batch_stats"]}, batch, train=True,
          mutable=["batch_stats"])
      loss = losses.mdmt_loss(logits, batch["labels"], batch["domain"], batch["mask"],
                              dataset.schema.num_domains)
      return loss, (logits, mutated.get("batch_stats", {}))

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)
    (_, (logits, stats)), grads = jax.jit(grad_fn)(variables["params"])
    out[dtype] = dict(model=model, logits=logits, grads=grads, stats=stats,
                      trace=jax.make_jaxpr(grad_fn)(variables["params"]))
  out["params"] = variables["params"]
  return out


def test_bfloat16_outputs_are_float32_and_close_to_float32(runs):
  low, full = runs["bfloat16"], runs["float32"]
  assert low["logits"].dtype == jnp.float32
  probabilities = jax.nn.sigmoid(low["logits"])
  assert probabilities.dtype == jnp.float32 and np.all(np.isfinite(probabilities))
  difference = np.max(np.abs(probabilities - jax.nn.sigmoid(full["logits"])))
  assert 0 < difference < PROBABILITY_TOLERANCE  # 0 would mean no bfloat16 at all


def test_bfloat16_keeps_parameters_gradients_and_statistics_float32(runs):
  low = runs["bfloat16"]
  for tree in (runs["params"], low["grads"], low["stats"]):
    assert {leaf.dtype for leaf in jax.tree.leaves(tree)} <= {jnp.dtype(jnp.float32)}
  shapes = jax.tree.map(jnp.shape, runs["params"])
  assert jax.tree.map(jnp.shape, low["grads"]) == shapes


def test_bfloat16_gradients_point_where_float32_gradients_do(runs):
  low, full = runs["bfloat16"], runs["float32"]
  a = np.concatenate([np.ravel(g) for g in jax.tree.leaves(low["grads"])])
  b = np.concatenate([np.ravel(g) for g in jax.tree.leaves(full["grads"])])
  assert np.all(np.isfinite(a))
  cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  assert cosine > 0.97, cosine  # measured >= 0.98 (M2M with "swr"), most models > 0.99
  for x, y in zip(jax.tree.leaves(low["stats"]), jax.tree.leaves(full["stats"])):
    np.testing.assert_allclose(x, y, rtol=0.02, atol=0.02)


def test_bfloat16_runs_the_matmuls_in_bfloat16(runs):
  low = _matmuls(runs["bfloat16"]["trace"].jaxpr, [])
  full = _matmuls(runs["float32"]["trace"].jaxpr, [])
  assert all(dtypes == {"float32"} for dtypes, _ in full)
  total = sum(flops for _, flops in low)
  in_float32 = sum(flops for dtypes, flops in low if "float32" in dtypes)
  assert total > 0 and in_float32 <= FLOAT32_MATMUL_SHARE * total, (in_float32, total)
  # The loss sees float32 logits: the sigmoid and BCE are float32 (see losses.py).


def test_losses_compute_bfloat16_logits_in_float32():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(50, 2)) * 4, jnp.bfloat16)
  labels = jnp.asarray(rng.integers(0, 2, (50, 2)), jnp.float32)
  domain = jnp.asarray(rng.integers(0, 3, 50), jnp.int32)
  mask = jnp.ones(50, jnp.float32)
  for loss in (losses.mdmt_loss, losses.mean_loss):
    got = loss(logits, labels, domain, mask, 3)
    want = loss(logits.astype(jnp.float32), labels, domain, mask, 3)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
  groups = losses.group_bce(logits, labels, domain, mask, 3)
  assert groups.dtype == jnp.float32


@pytest.mark.parametrize("value", ["float16", "bf16", "Float32"])
def test_an_unknown_dtype_is_refused_naming_the_field(value):
  config = default_model_config("mmoe")
  config.dtype = value
  schema = load_dataset(contract_run.tiny_config("mmoe").data).schema
  with pytest.raises(ConfigError, match="config.model.dtype"):
    build_model(config, schema)


def test_dtype_is_a_shared_field_defaulting_to_float32():
  config = default_model_config("m3oe")
  assert config.dtype == "float32"
  assert all("dtype" not in config[name] for name in MODELS)
