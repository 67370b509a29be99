"""STAR in both variants: names, shapes, sizes, own-domain weights, the original
variant against a plain numpy forward, its BatchNorm statistics and padding, and
option checks. The simplified variant's golden comparison is in
test_baselines_golden.py."""

import functools

import jax
import numpy as np
import pytest

from m3oe_jax.data.datasets import synthetic
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.errors import ConfigError
from m3oe_jax.models import build_model, export_weights, init_variables
from tests.helpers import batch_of, model_config, tiny_data_config

ORIGINAL = dict(variant="original", original_fcn_dims=(16, 8), aux_dims=(8,))
F = 4 * 4 + 1  # tiny data: 4 sparse features of width 4, 1 dense value


def build(num_tasks=1, **options):
  """(model, variables, dataset) on the tiny data with 3 domains; cached, as
  initialisation compiles slowly on CPU."""
  return _build(num_tasks, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=None)
def _build(num_tasks, options):
  dataset = synthetic.make_dataset(tiny_data_config(num_tasks=num_tasks))
  model = build_model(model_config("star", **dict(options)), dataset.schema)
  # The 'unsafe_rbg' generator compiles several times faster than threefry.
  variables = init_variables(model, dataset.schema, jax.random.key(0, impl="unsafe_rbg"))
  return model, variables, dataset


def schema(num_sparse, num_dense, num_domains=3, num_tasks=1, last="domain"):
  names = [f"f{i}" for i in range(num_sparse - 1)] + [last]
  return FeatureSchema(sparse_names=names, vocab_sizes=[7] * (num_sparse - 1) + [num_domains],
                       dense_names=[f"x{i}" for i in range(num_dense)],
                       domain_names=[str(d) for d in range(num_domains)],
                       task_names=[str(t) for t in range(num_tasks)])


def param_count(schema, **options):
  model = build_model(model_config("star", embed_dim=16, **options), schema)
  shapes = jax.eval_shape(lambda: init_variables(model, schema, jax.random.key(0)))
  return sum(int(np.prod(leaf.shape)) for scope, tree in shapes["params"].items()
             if scope != "embedding" for leaf in jax.tree.leaves(tree))


def shapes_of(tree):
  return {k: v.shape for k, v in export_weights(tree).items() if not k.startswith("embedding/")}


# --- the authors' (simplified) STAR -------------------------------------------


def test_simplified_names_shapes_and_initialisation():
  _, variables, _ = build(fcn_dims=(16, 8, 8, 6))
  assert shapes_of(variables["params"]) == {
      "star/shared_kernel": (F, 16), "star/shared_bias": (16,),
      "star/domain_kernel": (3, F, 16), "star/domain_bias": (3, 16),
      **{f"star_mlp/{k}": s for k, s in [("kernel", (16, 8)), ("bias", (8,)),
                                         ("ln_scale", (8,)), ("ln_bias", (8,))]},
      **{f"skip/{k}": s for k, s in [("kernel", (F, 8)), ("bias", (8,)),
                                     ("ln_scale", (8,)), ("ln_bias", (8,))]},
      **{f"main_mlp/layer0/{k}": s for k, s in [("kernel", (8, 6)), ("bias", (6,)),
                                                ("ln_scale", (6,)), ("ln_bias", (6,))]},
      **{f"head/hidden/{k}": s for k, s in [("kernel", (6, 6)), ("bias", (6,)),
                                            ("ln_scale", (6,)), ("ln_bias", (6,))]},
      "head/out/kernel": (6, 1), "head/out/bias": (1,),
  }
  assert not variables["batch_stats"]
  named = export_weights(variables["params"])
  xavier = np.sqrt(6 / (F + 16))  # Xavier-uniform star kernels, zero star biases
  for name in ("star/shared_kernel", "star/domain_kernel"):
    assert 0.8 * xavier < np.abs(named[name]).max() <= xavier
  np.testing.assert_array_equal(named["star/domain_bias"], 0.0)
  assert not np.allclose(named["star/domain_kernel"][0], named["star/domain_kernel"][1])


@pytest.mark.parametrize("sparse, dense, expected", [(7, 1, 415_937), (34, 0, 1_408_961)])
def test_simplified_parameter_counts_at_the_papers_sizes(sparse, dense, expected):
  assert param_count(schema(sparse, dense)) == expected


def test_simplified_rows_use_only_their_own_domains_star_weights():
  model, variables, dataset = build(fcn_dims=(16, 8, 8, 6))
  batch = batch_of(dataset, 48)
  logits, aux = model.apply(variables, batch)
  assert logits.shape == (48, 1) and aux == {}
  params = jax.tree.map(np.array, variables["params"])
  params["star"]["domain_kernel"][1] *= 2.0
  changed = ~np.isclose(model.apply({"params": params}, batch)[0], logits)[:, 0]
  np.testing.assert_array_equal(changed, batch["domain"] == 1)


def test_simplified_with_several_tasks_has_one_head_per_task():
  model, variables, dataset = build(num_tasks=2, fcn_dims=(16, 8, 8, 6))
  shapes = shapes_of(variables["params"])
  assert shapes["head/hidden/kernel"] == (2, 6, 6) and shapes["head/out/bias"] == (2, 1)
  assert shapes["star/domain_kernel"] == (3, F, 16)
  logits, _ = model.apply(variables, batch_of(dataset, 16))
  assert logits.shape == (16, 2) and not np.allclose(logits[:, 0], logits[:, 1])


# --- the original-style STAR -------------------------------------------------


def star_layer(prefix, per_domain=True):
  shapes = {"shared_kernel", "shared_bias", "domain_kernel", "domain_bias"}
  return {f"{prefix}/{k}" for k in shapes | ({"bn_scale", "bn_bias"} if per_domain else set())}


def test_original_names_shapes_and_statistics():
  _, variables, _ = build(num_tasks=2, norm_stats="batch", **ORIGINAL)
  shapes = shapes_of(variables["params"])
  assert set(shapes) == ({f"partition_norm/{k}" for k in ("shared_scale", "shared_bias",
                                                           "domain_scale", "domain_bias")}
                         | star_layer("fcn/layer0") | star_layer("fcn/layer1")
                         | star_layer("fcn/out", per_domain=False)
                         | {f"aux/layer0/{k}" for k in ("kernel", "bias", "bn_scale", "bn_bias")}
                         | {"aux/out/kernel", "aux/out/bias"})
  assert shapes["partition_norm/domain_scale"] == (3, F)
  assert shapes["fcn/layer0/shared_kernel"] == (F, 16)
  assert shapes["fcn/layer0/domain_kernel"] == (3, F, 16)
  assert shapes["fcn/layer1/bn_scale"] == (3, 8)
  assert shapes["fcn/out/domain_kernel"] == (3, 8, 2)  # one output unit per task
  assert shapes["aux/layer0/kernel"] == (F, 8) and shapes["aux/out/kernel"] == (8, 2)
  assert shapes_of(variables["batch_stats"]) == {
      "partition_norm/bn_mean": (F,), "partition_norm/bn_var": (F,),
      "fcn/layer0/bn_mean": (3, 16), "fcn/layer0/bn_var": (3, 16),
      "fcn/layer1/bn_mean": (3, 8), "fcn/layer1/bn_var": (3, 8),
      "aux/layer0/bn_mean": (8,), "aux/layer0/bn_var": (8,)}
  _, per_domain, _ = build(num_tasks=2, norm_stats="domain", **ORIGINAL)
  assert shapes_of(per_domain["batch_stats"])["partition_norm/bn_mean"] == (3, F)
  _, domain_aux, _ = build(num_tasks=2, aux_input="domain", **ORIGINAL)
  assert shapes_of(domain_aux["params"])["aux/layer0/kernel"] == (4, 8)  # the domain's embedding


def test_original_parameter_count_at_movielens_size():
  f, d, dims = 113, 3, [113, 128, 64, 32]
  star = sum((i * o + o) * (1 + d) + 2 * d * o for i, o in zip(dims[:-1], dims[1:]))
  out = (32 + 1) * (1 + d)
  aux = f * 32 + 32 + 2 * 32 + 32 + 1
  expected = 2 * f * (1 + d) + star + out + aux
  assert expected == 105_837
  assert param_count(schema(7, 1), variant="original") == expected


def numpy_input(named, batch):
  names = ["f0", "f1", "f2", "domain"]
  return np.concatenate([named[f"embedding/{n}"][batch["sparse"][:, k]]
                         for k, n in enumerate(names)] + [batch["dense"]], axis=1)


def numpy_original(named, batch, dims, aux_dims, per_domain, num_domains=3):
  """A plain numpy forward of the original variant in train mode."""
  x = numpy_input(named, batch).astype(np.float64)
  domain, eps = batch["domain"], 1e-5

  def norm(y, rows):
    mean, var = y[rows].mean(0), y[rows].var(0)
    return (y - mean) / np.sqrt(var + eps)

  main = np.zeros((len(x), named["fcn/out/shared_bias"].shape[0]))
  for d in range(num_domains):
    rows = domain == d if per_domain else np.ones(len(x), bool)
    p = lambda k: named[f"partition_norm/{k}"]
    h = norm(x, rows) * p("shared_scale") * p("domain_scale")[d] + p("shared_bias") + p("domain_bias")[d]
    for k in range(len(dims)):
      w = lambda n: named[f"fcn/layer{k}/{n}"]
      y = h @ (w("shared_kernel") * w("domain_kernel")[d]) + w("shared_bias") + w("domain_bias")[d]
      h = np.maximum(norm(y, rows) * w("bn_scale")[d] + w("bn_bias")[d], 0)
    w = lambda n: named[f"fcn/out/{n}"]
    out = h @ (w("shared_kernel") * w("domain_kernel")[d]) + w("shared_bias") + w("domain_bias")[d]
    main[domain == d] = out[domain == d]
  a = x
  for k in range(len(aux_dims)):
    w = lambda n: named[f"aux/layer{k}/{n}"]
    a = np.maximum(norm(a @ w("kernel") + w("bias"), np.ones(len(x), bool)) * w("bn_scale")
                   + w("bn_bias"), 0)
  return main + a @ named["aux/out/kernel"] + named["aux/out/bias"]


@pytest.mark.parametrize("norm_stats", ["batch", "domain"])
def test_original_matches_a_plain_numpy_forward(norm_stats):
  model, variables, dataset = build(num_tasks=2, norm_stats=norm_stats, **ORIGINAL)
  # Random weights instead of the init, so every scale and bias matters.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda v: rng.normal(0, 0.5, v.shape).astype(np.float32),
                        variables["params"])
  batch = batch_of(dataset, 40)
  with jax.default_matmul_precision("highest"):
    (logits, _), mutated = model.apply({**variables, "params": params}, batch, train=True,
                                  mutable=["batch_stats"])
  want = numpy_original(export_weights(params), batch, (16, 8), (8,), norm_stats == "domain")
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
  # The running statistics move by torch's rule: 0.9 * old + 0.1 * batch (unbiased var).
  stats = export_weights(mutated["batch_stats"])
  x = numpy_input(export_weights(params), batch)
  rows = [batch["domain"] == d for d in range(3)] if norm_stats == "domain" else [slice(None)]
  want_mean = np.stack([x[r].mean(0) for r in rows]).squeeze()
  want_var = np.stack([x[r].var(0, ddof=1) for r in rows]).squeeze()
  np.testing.assert_allclose(stats["partition_norm/bn_mean"], 0.1 * want_mean, atol=1e-5)
  np.testing.assert_allclose(stats["partition_norm/bn_var"], 0.9 + 0.1 * want_var, atol=1e-5)


@pytest.mark.parametrize("norm_stats", ["batch", "domain"])
def test_original_padded_rows_change_no_statistic_and_no_real_row(norm_stats):
  model, variables, dataset = build(num_tasks=2, norm_stats=norm_stats, **ORIGINAL)
  real = batch_of(dataset, 32)
  rng = np.random.default_rng(1)
  padded = {
      "sparse": np.concatenate([real["sparse"], real["sparse"][rng.integers(0, 32, 8)]]),
      "dense": np.concatenate([real["dense"], np.full((8, 1), 1e3, np.float32)]),
      "domain": np.concatenate([real["domain"], np.zeros(8, np.int32)]),
      "mask": np.concatenate([real["mask"], np.zeros(8, np.float32)]),
      "labels": np.concatenate([real["labels"], real["labels"][:8]]),
  }
  padded["sparse"][32:, -1] = 0  # the padding claims domain 0
  run = lambda b: model.apply(variables, b, train=True, mutable=["batch_stats"])
  (logits_real, _), stats_real = run(real)
  (logits_padded, _), stats_padded = run(padded)
  np.testing.assert_allclose(logits_padded[:32], logits_real, rtol=1e-5, atol=1e-5)
  for name, value in export_weights(stats_real["batch_stats"]).items():
    np.testing.assert_allclose(export_weights(stats_padded["batch_stats"])[name], value,
                               rtol=1e-5, atol=1e-6, err_msg=name)
  # Training moved the statistics; evaluation reads them and scores rows alone.
  initial = export_weights(variables["batch_stats"])
  assert not np.allclose(export_weights(stats_real["batch_stats"])["fcn/layer0/bn_mean"],
                         initial["fcn/layer0/bn_mean"])
  eval_all = model.apply(variables, real)[0]
  eval_few = model.apply(variables, {k: v[:5] for k, v in real.items()})[0]
  np.testing.assert_allclose(eval_few, eval_all[:5], rtol=1e-5, atol=1e-6)


def test_original_domain_statistics_see_only_their_domains_rows():
  model, variables, dataset = build(num_tasks=2, norm_stats="domain", **ORIGINAL)
  batch = batch_of(dataset, 48)
  other = dict(batch, dense=np.where(batch["domain"][:, None] == 0, 5.0, batch["dense"]))
  stats = lambda b: export_weights(
      model.apply(variables, b, train=True, mutable=["batch_stats"])[1]["batch_stats"])
  before, after = stats(batch), stats(other)
  for name in ("partition_norm/bn_mean", "fcn/layer0/bn_var", "fcn/layer1/bn_mean"):
    np.testing.assert_allclose(after[name][1:], before[name][1:], rtol=1e-5, err_msg=name)
    assert not np.allclose(after[name][0], before[name][0]), name


# --- options -----------------------------------------------------------------


@pytest.mark.parametrize("options, field", [
    (dict(variant="star"), "variant"),
    (dict(fcn_dims=(16, 8, 6, 4)), "fcn_dims"),
    (dict(fcn_dims=(16, 8)), "fcn_dims"),
    (dict(fcn_dims=(16, 0, 0, 4)), "fcn_dims"),
    (dict(original_fcn_dims=(16, 0)), "original_fcn_dims"),
    (dict(original_fcn_dims=()), "original_fcn_dims"),
    (dict(aux_dims=(-1,)), "aux_dims"),
    (dict(norm_stats="per_row"), "norm_stats"),
    (dict(aux_input="user"), "aux_input"),
])
def test_bad_options_are_rejected_naming_the_field(options, field):
  with pytest.raises(ConfigError, match=rf"config\.model\.star\.{field}\b"):
    model = build_model(model_config("star", **options), schema(4, 1))
    jax.eval_shape(lambda: init_variables(model, schema(4, 1), jax.random.key(0)))


def test_aux_input_domain_needs_a_domain_feature():
  no_domain = schema(4, 1, last="region")
  with pytest.raises(ConfigError, match=r"config\.model\.star\.aux_input"):
    model = build_model(model_config("star", variant="original", aux_input="domain"),
                        no_domain)
    jax.eval_shape(lambda: init_variables(model, no_domain, jax.random.key(0)))
