"""AdaTT and AdaTT-sp (spec baselines.md section 4.6)."""

import jax
import numpy as np
import pytest

from m3oe_jax.data.datasets import synthetic
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.models import build_model, dummy_batch, export_weights
from tests.helpers import batch_of, model_config, tiny_data_config


def tiny(name, seed=0, data=None, **options):
  """A model on the tiny synthetic data, initialised eagerly."""
  dataset = synthetic.make_dataset(tiny_data_config(**(data or {})))
  model = build_model(model_config(name, **options), dataset.schema)
  # The "rbg" generator compiles several times faster than threefry on CPU.
  key = jax.random.key(seed, impl="rbg")
  params = model.init(key, dummy_batch(dataset.schema))["params"]
  return model, params, dataset


def tiny_random(name, seed=1, data=None, **options):
  """A model with every weight drawn from N(0, 0.5), so that no gate is near
  uniform; the shapes come from tracing init, which compiles nothing."""
  dataset = synthetic.make_dataset(tiny_data_config(**(data or {})))
  model = build_model(model_config(name, **options), dataset.schema)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_batch(dataset.schema)))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda leaf: rng.normal(0.0, 0.5, leaf.shape).astype(np.float32),
                        shapes["params"])
  return model, params, dataset


def param_shapes(name, data=None, **options):
  _, params, _ = tiny_random(name, data=data, **options)
  return {k: v.shape for k, v in export_weights(params).items() if not k.startswith("embedding/")}


def param_count_without_embeddings(name, sparse, dense, num_domains, num_tasks):
  schema = FeatureSchema(sparse_names=[f"f{i}" for i in range(sparse - 1)] + ["domain"],
                         vocab_sizes=[7] * (sparse - 1) + [num_domains],
                         dense_names=[f"d{i}" for i in range(dense)],
                         domain_names=[str(d) for d in range(num_domains)],
                         task_names=[f"t{t}" for t in range(num_tasks)])
  config = model_config(name, embed_dim=16)
  model = build_model(config, schema)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_batch(schema)))
  return sum(int(np.prod(leaf.shape)) for path, leaf in
             jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
             if path[0].key != "embedding")


@pytest.mark.parametrize("name, movielens, kuairand", [
    ("adatt", 10_554, 49_344),
    ("adatt_sp", 8_502, 39_534),
])
def test_parameter_counts_match_the_spec(name, movielens, kuairand):
  # MovieLens MTL: 7 sparse x 16 + 1 dense = 113; KuaiRand: 34 sparse x 16 = 544.
  assert param_count_without_embeddings(name, 7, 1, 1, 2) == movielens
  assert param_count_without_embeddings(name, 34, 0, 1, 2) == kuairand


def test_parameter_names_and_shapes():
  d, t, m, f = 3, 2, 2, 4 * 4 + 1
  named = param_shapes("adatt")
  n = d * t * m + 1
  assert named == {
      "experts/layer0/kernel": (n, f, 16), "experts/layer0/bias": (n, 16),
      "gates/layer0/kernel": (d, t, f, n), "gates/layer0/bias": (d, t, n),
      "self_weights/layer0": (d, t, m),
      "towers/hidden/kernel": (d, t, 16, 8), "towers/hidden/bias": (d, t, 8),
      "towers/out/kernel": (d, t, 8, 1), "towers/out/bias": (d, t, 1),
  }
  named = param_shapes("adatt_sp")
  assert named["experts/layer0/kernel"] == (d * t * m, f, 16)
  assert named["gates/layer0/kernel"] == (d, t, f, d * t * m)
  assert named["self_weights/layer0"] == (d, t, m)
  # Two levels: AdaTT's shared module gets a gate (and native weights) on level 0 only.
  named = param_shapes("adatt", num_levels=2, expert_dims=(6, 5), tower_dims=(4, 3))
  assert named["experts/layer0/kernel"] == (n, f, 6)
  assert named["experts/layer0/kernel_1"] == (n, 6, 5)
  assert named["experts/layer1/kernel"] == (n, 5, 6)
  assert named["gates/layer1/kernel"] == (d, t, 5, n)
  assert named["shared_gate/layer0/kernel"] == (f, n)
  assert named["shared_self_weights/layer0"] == (1,)
  assert "shared_gate/layer1/kernel" not in named
  assert named["towers/hidden/kernel_1"] == (d, t, 4, 3)


def test_initialisation():
  m = 2
  _, params, _ = tiny("adatt")
  # Members of a bank start different, and native weights lie in U(+-sqrt(1/m)).
  kernels = np.asarray(export_weights(params)["experts/layer0/kernel"])
  assert not np.allclose(kernels[0], kernels[1])
  assert np.all(np.abs(export_weights(params)["self_weights/layer0"]) <= np.sqrt(1 / m))


# ---- an independent numpy re-implementation of the spec's equations ----------

def np_relu(v):
  return np.maximum(v, 0.0)


def np_softmax(v):
  v = v - v.max(-1, keepdims=True)
  return np.exp(v) / np.exp(v).sum(-1, keepdims=True)


def np_stack(w, prefix, v, widths):
  for k in range(widths):
    suffix = "" if k == 0 else f"_{k}"
    v = np_relu(v @ w[f"{prefix}kernel{suffix}"] + w[f"{prefix}bias{suffix}"])
  return v


def np_adatt(w, batch, D, T, m, s, levels, residual, expert_widths, tower_widths, emb_names):
  """Heads in the reference's flat order g = t*D + d; returns logits [B, T]."""
  w = {k: np.asarray(v, np.float64) for k, v in w.items()}
  x = np.concatenate([w[f"embedding/{f}"][batch["sparse"][:, k]] for k, f in enumerate(emb_names)]
                     + [batch["dense"].astype(np.float64)], axis=1)
  G = D * T

  def flat(a):  # [D, T, ...] -> [G, ...], g = t*D + d
    return np.swapaxes(a, 0, 1).reshape((G,) + a.shape[2:])

  def expert(l, k, v):
    return np_stack({kk.split("/")[-1]: vv[k] for kk, vv in w.items()
                     if kk.startswith(f"experts/layer{l}/")}, "", v, expert_widths)

  native_learned = residual and (m != 1 or (s > 0 and s != 1))
  task_in, shared_in = [x] * G, x
  for l in range(levels):
    n = G * m + s
    bank = np.stack([expert(l, k, task_in[k // m] if k < G * m else shared_in)
                     for k in range(n)], axis=1)                         # [B, n, w]
    A, c = flat(w[f"gates/layer{l}/kernel"]), flat(w[f"gates/layer{l}/bias"])
    beta = flat(w[f"self_weights/layer{l}"]) if native_learned else np.ones((G, m))
    out = []
    for g in range(G):
      a = np_softmax(task_in[g] @ A[g] + c[g])
      own = bank[:, g * m:(g + 1) * m]
      if s == 0:  # AdaTT-sp: f_g = a_g . E + r_g
        f = np.einsum("bn,bnw->bw", a, bank)
        if residual:
          f = f + (np.einsum("j,bjw->bw", beta[g], own) if m > 1 else own[:, 0])
      else:       # AdaTT: native weights added to the gate after the softmax
        if residual:
          a = a.copy()
          a[:, g * m:(g + 1) * m] += beta[g]
        f = np.einsum("bn,bnw->bw", a, bank)
      out.append(f)
    if s and l < levels - 1:
      a = np_softmax(shared_in @ w[f"shared_gate/layer{l}/kernel"]
                     + w[f"shared_gate/layer{l}/bias"])
      if residual:
        a = a.copy()
        a[:, G * m:] += w[f"shared_self_weights/layer{l}"] if native_learned else 1.0
      shared_in = np.einsum("bn,bnw->bw", a, bank)
    task_in = out
  logits = []
  for g in range(G):
    hw = {kk.split("/")[-1]: flat(vv)[g] for kk, vv in w.items() if kk.startswith("towers/hidden/")}
    h = np_stack(hw, "", task_in[g], tower_widths)
    logits.append((h @ flat(w["towers/out/kernel"])[g] + flat(w["towers/out/bias"])[g])[:, 0])
  logits = np.stack(logits, axis=1)                                     # [B, G]
  domain = batch["domain"]
  return np.stack([logits[np.arange(len(domain)), t * D + domain] for t in range(T)], axis=1)


@pytest.mark.parametrize("name, options, data", [
    ("adatt_sp", {}, {}),
    ("adatt", {}, {}),
    ("adatt_sp", {}, {"num_domains": 1}),
    ("adatt", {}, {"num_domains": 1}),
    ("adatt_sp", {"num_task_experts": 1}, {}),
    ("adatt", {"num_task_experts": 1}, {}),                              # unit native weights
    ("adatt", {"num_task_experts": 1, "num_shared_experts": 2}, {}),
    ("adatt", {"self_exp_res_connect": False}, {}),
    ("adatt_sp", {"num_levels": 2, "expert_dims": (6, 5), "tower_dims": (4, 3)}, {}),
    ("adatt", {"num_levels": 3, "expert_dims": (5,), "num_shared_experts": 2}, {}),
    ("adatt", {"num_levels": 2, "tower_dims": ()}, {"num_tasks": 1}),
])
def test_forward_matches_a_numpy_reimplementation_of_the_spec(name, options, data):
  model, params, dataset = tiny_random(name, data=data, **options)
  batch = batch_of(dataset, 6)
  logits, aux = jax.jit(model.apply)({"params": params}, batch)
  full = {**{"num_levels": 1, "expert_dims": (16,), "num_task_experts": 2,
             "num_shared_experts": 1, "self_exp_res_connect": True, "tower_dims": (8,)},
          **options}
  s = full["num_shared_experts"] if name == "adatt" else 0
  expected = np_adatt(export_weights(params), batch, dataset.schema.num_domains,
                      dataset.schema.num_tasks, full["num_task_experts"], s, full["num_levels"],
                      full["self_exp_res_connect"], len(full["expert_dims"]),
                      len(full["tower_dims"]), dataset.schema.sparse_names)
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=1e-5)
  n = dataset.schema.num_domains * dataset.schema.num_tasks * full["num_task_experts"] + s
  assert aux["gates"].shape == (6, dataset.schema.num_tasks, n)
  np.testing.assert_allclose(np.asarray(aux["gates"]).sum(-1), 1.0, atol=1e-5)


def test_rows_take_their_own_domain_heads_and_gradients_reach_every_part():
  model, params, dataset = tiny_random("adatt")
  batch = batch_of(dataset, 32)
  apply = jax.jit(model.apply)
  logits, _ = apply({"params": params}, batch)
  other = dict(batch, domain=(batch["domain"] + 1) % 3)
  assert not np.allclose(apply({"params": params}, other)[0], logits)

  def loss(p):
    return model.apply({"params": p}, batch)[0].sum()

  grads = export_weights(jax.jit(jax.grad(loss))(params))
  for key in ("experts/layer0/kernel", "gates/layer0/kernel", "self_weights/layer0",
              "towers/out/kernel"):
    assert np.any(np.asarray(grads[key]) != 0), key


@pytest.mark.parametrize("name, options, field", [
    ("adatt", {"num_levels": 0}, "num_levels"),
    ("adatt", {"expert_dims": ()}, "expert_dims"),
    ("adatt_sp", {"expert_dims": (16, 0)}, "expert_dims"),
    ("adatt_sp", {"num_task_experts": 0}, "num_task_experts"),
    ("adatt", {"num_shared_experts": 0}, "num_shared_experts"),
    ("adatt", {"tower_dims": (-1,)}, "tower_dims"),
])
def test_bad_options_are_rejected_naming_the_field(name, options, field):
  with pytest.raises(ValueError, match=rf"config\.model\.{name}\.{field}"):
    tiny_random(name, **options)


def test_adatt_sp_takes_no_shared_expert_option():
  with pytest.raises(ValueError, match="num_shared_experts"):
    tiny_random("adatt_sp", num_shared_experts=1)
