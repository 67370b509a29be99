"""MMoE: parameter layout and counts, options, gates, and the BatchNorm tower.

The small builders at the top are shared with test_ple.py and test_shared_bottom.py.
"""

import functools

import flax
import jax
import ml_collections
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.errors import ConfigError
from m3oe_jax.models import build_model, export_weights, init_variables
from m3oe_jax.models.mmoe import MMoE

# --- builders shared by the baseline tests ----------------------------------------

MOVIELENS = dict(vocabs=(50,) * 6, num_dense=1)   # 7 sparse x 16 + 1 dense: F = 113
KUAIRAND = dict(vocabs=(50,) * 33, num_dense=0)   # 34 sparse x 16: F = 544


def model_config(name, embed_dim=4, **options):
  """`config.model` for `name` alone (independent of the other registered models)."""
  return ml_collections.ConfigDict(dict(name=name, embed_dim=embed_dim, embed_init_std=1e-4,
                                        embed_rows_multiple=1, **{name: options}))


def schema(num_domains=3, num_tasks=2, vocabs=(13, 11, 5), num_dense=1):
  """Sparse features f0.. then `domain` (vocab D), and `num_dense` dense ones."""
  vocabs = list(vocabs) + [num_domains]
  return FeatureSchema(
      sparse_names=[f"f{i}" for i in range(len(vocabs) - 1)] + ["domain"], vocab_sizes=vocabs,
      dense_names=[f"x{i}" for i in range(num_dense)],
      domain_names=[str(d) for d in range(num_domains)],
      task_names=[str(t) for t in range(num_tasks)])


def random_batch(s, n, seed=0):
  """n rows cycling through the domains, all real (mask 1)."""
  rng = np.random.default_rng(seed)
  sparse = np.stack([rng.integers(0, v, n) for v in s.vocab_sizes], 1).astype(np.int32)
  domain = np.arange(n, dtype=np.int32) % s.num_domains
  sparse[:, -1] = domain
  return {"sparse": sparse, "dense": rng.normal(size=(n, len(s.dense_names))).astype(np.float32),
          "domain": domain, "mask": np.ones(n, np.float32)}


def build(name, s=None, embed_dim=4, **options):
  """(model, variables, schema): random weights drawn with numpy (compiling the
  model's own initialiser is slow on a busy CPU; it is tested in
  test_initialisation_follows_torch_defaults) and BatchNorm statistics at their
  initial values (mean 0, variance 1)."""
  s = s or schema()
  model = build_model(model_config(name, embed_dim=embed_dim, **options), s)
  template = jax.eval_shape(lambda: init_variables(model, s, jax.random.key(0)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda v: rng.uniform(-0.5, 0.5, v.shape).astype(np.float32),
                        template["params"])
  stats = flax.core.unfreeze(template["batch_stats"])
  stats = jax.tree_util.tree_map_with_path(
      lambda path, v: np.full(v.shape, path[-1].key == "bn_var", np.float32), stats)
  return model, {"params": params, "batch_stats": stats}, s


def shapes(name, s=None, embed_dim=4, **options):
  """({param name: shape}, {batch_stats name: shape}) without running the model."""
  s = s or schema()
  model = build_model(model_config(name, embed_dim=embed_dim, **options), s)
  variables = jax.eval_shape(lambda: init_variables(model, s, jax.random.key(0)))
  flat = lambda tree: {k: v.shape for k, v in flatten_dict(tree, sep="/").items()}
  return flat(variables["params"]), flat(variables["batch_stats"])


def count_without_embeddings(name, s, **options):
  params, _ = shapes(name, s, embed_dim=16, **options)
  return sum(int(np.prod(v)) for k, v in params.items() if not k.startswith("embedding/"))


def jitted(model):
  """model.apply under jit: (variables, batch) in eval mode, or in train mode
  returning (logits, aux) and the updated batch_stats."""
  evaluate = jax.jit(lambda v, b: model.apply(v, b, train=False))

  @jax.jit
  def train(v, b):
    out, mutated = model.apply(v, b, train=True, mutable=["batch_stats"])
    return out, mutated.get("batch_stats", {})

  return evaluate, train


def check_padding_and_eval_mode(model, variables, s):
  """BatchNorm: padded rows (mask 0) change neither the real rows' train-mode
  logits nor the running statistics; eval mode uses the running statistics."""
  evaluate, train = jitted(model)
  real = random_batch(s, 12, seed=1)
  junk = random_batch(s, 12, seed=2)
  junk["dense"] = junk["dense"] * 100.0 + 7.0
  padded = {k: np.concatenate([real[k], junk[k][:4]]) for k in real}
  padded["mask"] = np.concatenate([np.ones(12, np.float32), np.zeros(4, np.float32)])

  (logits, _), stats = train(variables, real)
  (padded_logits, _), padded_stats = train(variables, padded)
  np.testing.assert_allclose(padded_logits[:12], logits, rtol=1e-5, atol=1e-5)
  initial = export_weights(variables["batch_stats"])
  for name, value in export_weights(stats).items():
    np.testing.assert_allclose(export_weights(padded_stats)[name], value,
                               rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(value, initial[name]), f"{name} did not move"

  # Eval mode: a row's logits depend on the running statistics only, not on
  # the other rows of the batch.
  updated = {**variables, "batch_stats": stats}
  eval_logits, _ = evaluate(updated, real)
  shuffled = {k: v[::-1] for k, v in real.items()}
  np.testing.assert_allclose(evaluate(updated, shuffled)[0][::-1], eval_logits, atol=1e-5)
  mixed = {k: np.concatenate([v[:6], junk[k][:6]]) for k, v in real.items()}
  np.testing.assert_allclose(evaluate(updated, mixed)[0][:6], eval_logits[:6], atol=1e-5)
  assert not np.allclose(evaluate(variables, real)[0], eval_logits)
  assert not np.allclose(eval_logits, logits)


def check_output_bias_moves_only_its_head(model, variables, s):
  """Adding 1 to head (d=D-1, t=T-1)'s output bias moves exactly the logits of
  task T-1 on the rows of domain D-1."""
  evaluate, _ = jitted(model)
  batch = random_batch(s, 12)
  params = variables["params"]
  shifted = jax.tree.map(np.array, params)
  shifted["towers"]["out"]["bias"][-1, -1, 0] += 1.0
  before, _ = evaluate(variables, batch)
  after, _ = evaluate({**variables, "params": shifted}, batch)
  expected = np.zeros(before.shape, np.float32)
  expected[batch["domain"] == s.num_domains - 1, s.num_tasks - 1] = 1.0
  np.testing.assert_allclose(np.asarray(after - before), expected, atol=1e-5)


def check_rejected(name, field, **options):
  s = schema()
  with pytest.raises(ConfigError, match=rf"config\.model\.{name}\.{field}"):
    model = build_model(model_config(name, **options), s)
    jax.eval_shape(lambda: init_variables(model, s, jax.random.key(0)))


# --- MMoE ---------------------------------------------------------------------------


@functools.cache
def tiny(tower_norm):
  return build("mmoe", **MMoE.TINY, tower_norm=tower_norm)


def test_parameter_names_and_shapes():
  s = schema()
  params, stats = shapes("mmoe", fcn_dims=(16, 8), num_experts=4)
  f = 4 * 4 + 1
  expected = {
      "experts/layer0/kernel": (4, f, 16), "experts/layer0/bias": (4, 16),
      "experts/layer0/ln_scale": (4, 16), "experts/layer0/ln_bias": (4, 16),
      "experts/layer1/kernel": (4, 16, 8), "experts/layer1/bias": (4, 8),
      "experts/layer1/ln_scale": (4, 8), "experts/layer1/ln_bias": (4, 8),
      "gates/kernel": (3, 2, f, 4), "gates/bias": (3, 2, 4),
      "towers/hidden/kernel": (3, 2, 8, 8), "towers/hidden/bias": (3, 2, 8),
      "towers/hidden/ln_scale": (3, 2, 8), "towers/hidden/ln_bias": (3, 2, 8),
      "towers/out/kernel": (3, 2, 8, 1), "towers/out/bias": (3, 2, 1),
  }
  expected.update({f"embedding/{n}": (v, 4) for n, v in zip(s.sparse_names, s.vocab_sizes)})
  assert params == expected
  assert stats == {}


def test_batch_tower_norm_has_batch_statistics():
  params, stats = shapes("mmoe", fcn_dims=(16, 8), tower_norm="batch")
  assert params["towers/hidden/bn_scale"] == (3, 2, 8)
  assert params["towers/hidden/bn_bias"] == (3, 2, 8)
  assert "towers/hidden/ln_scale" not in params
  assert stats == {"towers/hidden/bn_mean": (3, 2, 8), "towers/hidden/bn_var": (3, 2, 8)}


@pytest.mark.parametrize("data, d, t, count", [
    (MOVIELENS, 1, 1, 189_897), (MOVIELENS, 1, 2, 194_706), (MOVIELENS, 3, 1, 199_515),
    (MOVIELENS, 3, 2, 213_942), (KUAIRAND, 1, 2, 639_498), (KUAIRAND, 3, 1, 646_031),
    (KUAIRAND, 3, 2, 665_630)])
@pytest.mark.parametrize("tower_norm", ["layer", "batch"])
def test_parameter_counts_match_the_spec(data, d, t, count, tower_norm):
  s = schema(num_domains=d, num_tasks=t, **data)
  assert count_without_embeddings("mmoe", s, tower_norm=tower_norm) == count


def test_defaults_are_the_papers():
  model = build_model(model_config("mmoe"), schema())
  assert (model.fcn_dims, model.num_experts, model.tower_norm) == ((256, 64), 4, "layer")


def test_initialisation_follows_torch_defaults():
  s = schema()
  model = build_model(model_config("mmoe", **MMoE.TINY), s)
  named = export_weights(init_variables(model, s, jax.random.key(0))["params"])
  f = 4 * 4 + 1
  for name, fan_in in [("experts/layer0/kernel", f), ("experts/layer0/bias", f),
                       ("gates/kernel", f), ("towers/hidden/kernel", 8),
                       ("towers/out/bias", 8)]:
    value = named[name]
    assert np.abs(value).max() <= 1 / np.sqrt(fan_in), name
    assert np.abs(value).max() > 0.5 / np.sqrt(fan_in), name
  np.testing.assert_array_equal(named["towers/hidden/ln_scale"], 1.0)
  np.testing.assert_array_equal(named["experts/layer1/ln_bias"], 0.0)
  assert np.abs(named["embedding/f0"]).max() < 1e-3
  # Members of a bank are drawn independently.
  kernels = named["experts/layer0/kernel"]
  assert not np.allclose(kernels[0], kernels[1])
  gates = named["gates/kernel"]
  assert not np.allclose(gates[0, 0], gates[1, 0]) and not np.allclose(gates[0, 0], gates[0, 1])


def test_logits_and_gates_per_own_domain():
  model, variables, s = tiny("layer")
  evaluate, _ = jitted(model)
  batch = random_batch(s, 12)
  logits, aux = evaluate(variables, batch)
  assert logits.shape == (12, 2) and logits.dtype == np.float32
  assert aux["gates"].shape == (12, 2, MMoE.TINY["num_experts"])
  np.testing.assert_allclose(aux["gates"].sum(-1), 1.0, atol=1e-6)
  # The domain id alone (the features unchanged) selects the gates and towers.
  other = dict(batch, domain=(batch["domain"] + 1) % 3)
  changed, changed_aux = evaluate(variables, other)
  assert not np.allclose(changed, logits)
  assert not np.allclose(changed_aux["gates"], aux["gates"])
  # With the LayerNorm tower, rows are independent of each other, also in train mode.
  _, train = jitted(model)
  (train_logits, _), stats = train(variables, {k: v[::-1] for k, v in batch.items()})
  np.testing.assert_allclose(train_logits[::-1], logits, rtol=1e-5, atol=1e-6)
  assert stats == {}


def test_every_head_is_selected_by_its_domain():
  check_output_bias_moves_only_its_head(*tiny("layer"))


@pytest.mark.parametrize("field, options", [
    ("fcn_dims", dict(fcn_dims=())), ("fcn_dims", dict(fcn_dims=(8, 0))),
    ("num_experts", dict(num_experts=0)), ("tower_norm", dict(tower_norm="group"))])
def test_bad_options_are_rejected_naming_the_field(field, options):
  check_rejected("mmoe", field, **options)


def test_batch_norm_tower_ignores_padding_and_uses_running_stats_in_eval():
  check_padding_and_eval_mode(*tiny("batch"))
