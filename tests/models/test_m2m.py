"""M2M (spec baselines.md section 4.7)."""

import jax
import numpy as np
import pytest

from m3oe_jax.data.datasets import synthetic
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.models import build_model, dummy_batch, export_weights
from tests.helpers import batch_of, model_config, tiny_data_config

OPTION_GRID = [(backbone, meta) for backbone in ("none", "field_transformer")
               for meta in ("linear", "swr")]


def tiny_random(seed=1, **options):
  """M2M on the tiny synthetic data with every weight drawn at random and
  non-trivial running statistics; shapes come from tracing init (no compile)."""
  dataset = synthetic.make_dataset(tiny_data_config())
  model = build_model(model_config("m2m", **options), dataset.schema)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_batch(dataset.schema)))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda leaf: rng.normal(0.0, 0.5, leaf.shape).astype(np.float32),
                        shapes["params"])
  stats = {}
  if "batch_stats" in shapes:
    stats = jax.tree_util.tree_map_with_path(
        lambda path, leaf: (rng.uniform(0.5, 2.0, leaf.shape) if path[-1].key == "bn_var"
                            else rng.normal(0.0, 0.5, leaf.shape)).astype(np.float32),
        shapes["batch_stats"])
  return model, {"params": params, "batch_stats": stats}, dataset


def train_apply(model):
  """Train-mode apply, jitted: (logits, aux), {'batch_stats': updated}."""
  return jax.jit(lambda variables, batch: model.apply(variables, batch, train=True,
                                                      mutable=["batch_stats"]))


def named_shapes(tree):
  return {k: v.shape for k, v in export_weights(tree).items()}


def test_parameter_names_and_shapes():
  k, f, h, t, e = 4, 4 * 4 + 1, 16, 2, 4
  _, variables, _ = tiny_random()
  named = {n: s for n, s in named_shapes(variables["params"]).items()
           if not n.startswith("embedding/")}
  bn = lambda prefix, lead, w: {f"{prefix}/bn_scale": lead + (w,), f"{prefix}/bn_bias": lead + (w,)}
  assert named == {
      "experts/kernel": (k, f, h), "experts/bias": (k, h), **bn("experts", (k,), h),
      "scenario/kernel": (e, h), "scenario/bias": (h,), **bn("scenario", (), h),
      "task_emb": (t, e),
      "task_view/kernel": (e, h), "task_view/bias": (h,),
      "meta_attention/gen_w/kernel": (h, 4 * h * h), "meta_attention/gen_w/bias": (4 * h * h,),
      "meta_attention/gen_b/kernel": (h, 2 * h), "meta_attention/gen_b/bias": (2 * h,),
      "meta_attention/v": (2 * h,),
      "meta_tower/gen_w/kernel": (t, h, h * h), "meta_tower/gen_w/bias": (t, h * h),
      "meta_tower/gen_b/kernel": (t, h, h), "meta_tower/gen_b/bias": (t, h),
      "out/layer0/kernel": (t, h, 64), "out/layer0/bias": (t, 64), **bn("out/layer0", (t,), 64),
      "out/layer1/kernel": (t, 64, 32), "out/layer1/bias": (t, 32), **bn("out/layer1", (t,), 32),
      "out/logit/kernel": (t, 32, 1), "out/logit/bias": (t, 1),
  }
  assert set(named_shapes(variables["batch_stats"])) == {
      f"{m}/{s}" for m in ("experts", "scenario", "out/layer0", "out/layer1")
      for s in ("bn_mean", "bn_var")}
  # Options: the transformer backbone and the "swr" generators add their weights.
  _, variables, _ = tiny_random(backbone="field_transformer", meta_weights="swr")
  named = named_shapes(variables["params"])
  assert named["backbone/layer1/query/kernel"] == (e, e)
  assert named["backbone/layer0/ff1/kernel"] == (e, 16)
  assert named["backbone/layer0/norm2/ln_scale"] == (e,)
  assert named["meta_tower/gen_w/bn_scale"] == (t, h * h)
  assert named_shapes(variables["batch_stats"])["meta_attention/gen_w/bn_var"] == (4 * h * h,)


def test_parameter_count_at_the_paper_size():
  # MovieLens MDMT: 7 sparse x 16 + 1 dense = 113, D = 3, T = 2; embeddings excluded.
  schema = FeatureSchema(sparse_names=[f"f{i}" for i in range(6)] + ["domain"],
                         vocab_sizes=[7] * 6 + [3], dense_names=["age"],
                         domain_names=["0", "1", "2"], task_names=["click", "like"])
  model = build_model(model_config("m2m", embed_dim=16), schema)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_batch(schema)))
  count = sum(int(np.prod(leaf.shape)) for path, leaf in
              jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
              if path[0].key != "embedding")
  experts = 4 * (113 * 16 + 16 + 2 * 16)
  scenario = 16 * 16 + 16 + 2 * 16
  task = 2 * 16 + 16 * 16 + 16
  attention = (16 * 1024 + 1024) + (16 * 32 + 32) + 32
  tower = 2 * ((16 * 256 + 256) + (16 * 16 + 16))
  out = 2 * ((16 * 64 + 64 + 128) + (64 * 32 + 32 + 64) + (32 + 1))
  assert count == experts + scenario + task + attention + tower + out == 42_050


@pytest.mark.parametrize("backbone, meta_weights", OPTION_GRID)
def test_eval_predictions_of_a_row_do_not_depend_on_the_other_rows(backbone, meta_weights):
  model, variables, dataset = tiny_random(backbone=backbone, meta_weights=meta_weights)
  batch = batch_of(dataset, 24)
  apply = jax.jit(model.apply)
  logits, aux = apply(variables, batch)
  assert logits.shape == (24, 2) and np.all(np.isfinite(logits))
  assert aux["expert_attention"].shape == (24, 2, 4)
  np.testing.assert_allclose(np.asarray(aux["expert_attention"]).sum(-1), 1.0, atol=1e-5)
  # The same rows in another order, and among other rows.
  order = np.random.default_rng(0).permutation(24)
  shuffled = {k: v[order] for k, v in batch.items()}
  np.testing.assert_allclose(apply(variables, shuffled)[0], np.asarray(logits)[order],
                             rtol=1e-5, atol=1e-5)
  other = batch_of(dataset, 43)  # 5 rows among 19 others: same shape, one compile
  mixed = {k: np.concatenate([batch[k][:5], other[k][24:]]) for k in batch}
  np.testing.assert_allclose(apply(variables, mixed)[0][:5], np.asarray(logits)[:5],
                             rtol=1e-5, atol=1e-5)

  # Train mode runs, updates the running statistics of every BatchNorm, and
  # has gradients for every part.
  (train_logits, _), updated = train_apply(model)(variables, batch)
  assert np.all(np.isfinite(train_logits))
  for name, value in export_weights(updated["batch_stats"]).items():
    assert not np.allclose(value, export_weights(variables["batch_stats"])[name]), name

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, batch, train=True,
                         mutable=["batch_stats"])
    return out[0].sum()

  grads = export_weights(jax.jit(jax.grad(loss))(variables["params"]))
  for name in ("experts/kernel", "scenario/kernel", "task_emb", "meta_attention/gen_w/kernel",
               "meta_attention/v", "meta_tower/gen_b/kernel", "out/logit/kernel",
               "embedding/domain"):
    assert np.any(np.asarray(grads[name]) != 0), name
  if backbone == "field_transformer":
    assert np.any(np.asarray(grads["backbone/layer0/query/kernel"]) != 0)


def test_masked_rows_change_neither_statistics_nor_real_rows():
  model, variables, dataset = tiny_random(backbone="field_transformer", meta_weights="swr")
  batch = batch_of(dataset, 32)
  mask = np.ones(32, np.float32)
  mask[20:] = 0.0
  batch["mask"] = mask
  apply = train_apply(model)
  (logits, _), stats = apply(variables, batch)
  rng = np.random.default_rng(3)
  scrambled = dict(batch)
  scrambled["sparse"] = batch["sparse"].copy()
  for j, vocab in enumerate(dataset.schema.vocab_sizes):
    scrambled["sparse"][20:, j] = rng.integers(0, vocab, 12)
  scrambled["domain"] = batch["domain"].copy()
  scrambled["domain"][20:] = scrambled["sparse"][20:, -1]
  scrambled["dense"] = batch["dense"].copy()
  scrambled["dense"][20:] = rng.normal(0, 10, scrambled["dense"][20:].shape)
  (logits2, _), stats2 = apply(variables, scrambled)
  np.testing.assert_allclose(logits2[:20], logits[:20], rtol=1e-5, atol=1e-5)
  for name, value in export_weights(stats["batch_stats"]).items():
    np.testing.assert_allclose(export_weights(stats2["batch_stats"])[name], value,
                               rtol=1e-5, atol=1e-6, err_msg=name)
  # ... and they equal the statistics of the real rows alone.
  real = {k: v[:20] for k, v in batch.items()}
  (logits3, _), stats3 = apply(variables, real)
  np.testing.assert_allclose(logits3, logits[:20], rtol=1e-5, atol=1e-5)
  for name, value in export_weights(stats["batch_stats"]).items():
    np.testing.assert_allclose(export_weights(stats3["batch_stats"])[name], value,
                               rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_scenario_comes_from_the_domain_features_embedding():
  model, variables, dataset = tiny_random()
  batch = batch_of(dataset, 16)
  apply = jax.jit(model.apply)
  logits, _ = apply(variables, batch)
  # The domain id is read through its embedding, the last sparse column.
  moved = dict(batch, sparse=batch["sparse"].copy())
  moved["sparse"][:, -1] = (batch["sparse"][:, -1] + 1) % 3
  assert not np.allclose(apply(variables, moved)[0], logits)
  # Only the two task heads exist; `domain` itself is not read twice.
  np.testing.assert_array_equal(
      apply(variables, dict(batch, domain=(batch["domain"] + 1) % 3))[0], logits)


@pytest.mark.parametrize("options, field", [
    ({"backbone": "transformer"}, "backbone"),
    ({"meta_weights": "mlp"}, "meta_weights"),
    ({"num_experts": 0}, "num_experts"),
    ({"hidden": 0}, "hidden"),
    ({"out_dims": (64, 0)}, "out_dims"),
    ({"backbone": "field_transformer", "transformer_heads": 3}, "transformer_heads"),
    ({"transformer_layers": 0}, "transformer_layers"),
])
def test_bad_options_are_rejected_naming_the_field(options, field):
  with pytest.raises(ValueError, match=rf"config\.model\.m2m\.{field}"):
    tiny_random(**options)


# ---- an independent numpy re-implementation of the spec's equations (eval mode) ----

def np_leaky(v):
  return np.where(v > 0, v, 0.1 * v)


def np_softmax(v):
  v = v - v.max(-1, keepdims=True)
  return np.exp(v) / np.exp(v).sum(-1, keepdims=True)


def np_layer_norm(v, scale, bias):
  mu = v.mean(-1, keepdims=True)
  var = ((v - mu) ** 2).mean(-1, keepdims=True)
  return (v - mu) / np.sqrt(var + 1e-5) * scale + bias


def np_m2m(w, stats, batch, names, e, heads, swr):
  w = {k: np.asarray(v, np.float64) for k, v in w.items()}
  stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}

  def bn(y, prefix, i=()):
    pick = lambda a: a[i] if i != () else a
    return ((y - pick(stats[f"{prefix}/bn_mean"])) / np.sqrt(pick(stats[f"{prefix}/bn_var"]) + 1e-5)
            * pick(w[f"{prefix}/bn_scale"]) + pick(w[f"{prefix}/bn_bias"]))

  def gen(prefix, s, i=()):
    pick = lambda a: a[i] if i != () else a
    y = s @ pick(w[f"{prefix}/kernel"]) + pick(w[f"{prefix}/bias"])
    return np_leaky(bn(y, prefix, i)) if swr else y

  rows = len(batch["domain"])
  fields = np.stack([w[f"embedding/{f}"][batch["sparse"][:, j]] for j, f in enumerate(names)], 1)
  domain_emb = fields[:, -1]
  layer = 0
  while f"backbone/layer{layer}/query/kernel" in w:     # torch TransformerEncoderLayer, post-norm
    p = lambda n: w[f"backbone/layer{layer}/{n}"]
    lin = lambda v, n: v @ p(f"{n}/kernel") + p(f"{n}/bias")
    q, k, v = (lin(fields, n).reshape(rows, len(names), heads, e // heads)
               for n in ("query", "key", "value"))
    att = np_softmax(np.einsum("bihd,bjhd->bhij", q, k) / np.sqrt(e // heads))
    mixed = np.einsum("bhij,bjhd->bihd", att, v).reshape(rows, len(names), e)
    fields = np_layer_norm(fields + lin(mixed, "attention_out"), p("norm1/ln_scale"),
                           p("norm1/ln_bias"))
    ff = lin(np.maximum(lin(fields, "ff1"), 0), "ff2")
    fields = np_layer_norm(fields + ff, p("norm2/ln_scale"), p("norm2/ln_bias"))
    layer += 1
  u = np.concatenate([fields.reshape(rows, -1), batch["dense"]], axis=1)

  K, h = w["experts/bias"].shape
  T = w["task_emb"].shape[0]
  experts = np.stack([np_leaky(bn(u @ w["experts/kernel"][k] + w["experts/bias"][k], "experts", k))
                      for k in range(K)], axis=1)                        # [B, K, h]
  s = np_leaky(bn(domain_emb @ w["scenario/kernel"] + w["scenario/bias"], "scenario"))
  task_view = np_leaky(w["task_emb"] @ w["task_view/kernel"] + w["task_view/bias"])
  weight = gen("meta_attention/gen_w", s).reshape(rows, 2 * h, 2 * h)
  bias = gen("meta_attention/gen_b", s)
  logits = np.zeros((rows, T))
  attention = np.zeros((rows, T, K))
  for b in range(rows):
    for t in range(T):
      scores = [np_leaky(np.concatenate([experts[b, k], task_view[t]]) @ weight[b] + bias[b])
                @ w["meta_attention/v"] for k in range(K)]
      attention[b, t] = np_softmax(np.array(scores))
      r = attention[b, t] @ experts[b]
      tower_w = gen("meta_tower/gen_w", s[b:b + 1], t).reshape(h, h)
      tower_b = gen("meta_tower/gen_b", s[b:b + 1], t)[0]
      o = np_leaky(r @ tower_w + tower_b + r)[None]
      j = 0
      while f"out/layer{j}/kernel" in w:
        o = np.maximum(bn(o @ w[f"out/layer{j}/kernel"][t] + w[f"out/layer{j}/bias"][t],
                          f"out/layer{j}", t), 0)
        j += 1
      logits[b, t] = (o @ w["out/logit/kernel"][t] + w["out/logit/bias"][t])[0, 0]
  return logits, attention


@pytest.mark.parametrize("backbone, meta_weights", [("none", "linear"),
                                                    ("field_transformer", "swr")])
def test_eval_forward_matches_a_numpy_reimplementation(backbone, meta_weights):
  model, variables, dataset = tiny_random(backbone=backbone, meta_weights=meta_weights,
                                          out_dims=(6, 5))
  batch = batch_of(dataset, 5)
  logits, aux = jax.jit(model.apply)(variables, batch)
  expected, attention = np_m2m(export_weights(variables["params"]),
                               export_weights(variables["batch_stats"]), batch,
                               dataset.schema.sparse_names, 4, 4, meta_weights == "swr")
  np.testing.assert_allclose(np.asarray(aux["expert_attention"]), attention, atol=1e-5)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_layers_follow_torch_with_an_exactly_zero_train_bias_gradient():
  from m3oe_jax.models.m2m import BlockBNAct
  rng = np.random.default_rng(0)
  x = rng.normal(0, 1, (12, 5)).astype(np.float32)
  mask = np.ones(12, np.float32)
  mask[9:] = 0
  layer = BlockBNAct(3, use_running_average=False, relu=True)
  variables = layer.init(jax.random.key(0), x, mask)
  params = jax.tree.map(lambda v: rng.normal(0, 1, v.shape).astype(np.float32),
                        variables["params"])
  stats = {"bn_mean": rng.normal(0, 1, 3).astype(np.float32),
           "bn_var": rng.uniform(0.5, 2, 3).astype(np.float32)}
  out, updated = layer.apply({"params": params, "batch_stats": stats}, x, mask,
                             mutable=["batch_stats"])
  w = {k: np.asarray(v, np.float64) for k, v in params.items()}
  y = x[:9].astype(np.float64) @ w["kernel"] + w["bias"]
  mean, var = y.mean(0), y.var(0)
  expected = np.maximum((y - mean) / np.sqrt(var + 1e-5) * w["bn_scale"] + w["bn_bias"], 0)
  np.testing.assert_allclose(np.asarray(out)[:9], expected, atol=1e-5)
  np.testing.assert_allclose(updated["batch_stats"]["bn_mean"], 0.9 * stats["bn_mean"] + 0.1 * mean,
                             atol=1e-6)
  np.testing.assert_allclose(updated["batch_stats"]["bn_var"],
                             0.9 * stats["bn_var"] + 0.1 * y.var(0, ddof=1), atol=1e-6)

  def loss(p):
    return layer.apply({"params": p, "batch_stats": stats}, x, mask,
                       mutable=["batch_stats"])[0].sum()

  grads = jax.grad(loss)(params)
  assert np.all(np.asarray(grads["bias"]) == 0) and np.any(np.asarray(grads["kernel"]) != 0)
  # Eval mode: x @ kernel + bias normalised with the running statistics.
  frozen = BlockBNAct(3, use_running_average=True, relu=True)
  out = frozen.apply({"params": params, "batch_stats": stats}, x, mask)
  y = x.astype(np.float64) @ w["kernel"] + w["bias"]
  expected = np.maximum((y - stats["bn_mean"]) / np.sqrt(stats["bn_var"] + 1e-5) * w["bn_scale"]
                        + w["bn_bias"], 0)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
