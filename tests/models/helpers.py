"""Small builders shared by the baselines' model tests (test_mmoe.py, test_ple.py,
test_shared_bottom.py): schemas, random batches, built models, and checks of
padding, eval mode, a head's output bias and refused options."""

import flax
import jax
import ml_collections
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.errors import ConfigError
from m3oe_jax.models import build_model, export_weights, init_variables

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
