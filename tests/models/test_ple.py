"""PLE: parameter layout and counts, options, several extraction levels against a
plain numpy re-implementation, and BatchNorm with padding and in eval mode."""

import functools

import numpy as np
import pytest

from m3oe_jax.models import build_model, export_weights
from m3oe_jax.models.ple import PLE
from tests.models.helpers import (KUAIRAND, MOVIELENS, build, check_output_bias_moves_only_its_head,
                                  check_padding_and_eval_mode, check_rejected,
                                  count_without_embeddings, jitted, model_config,
                                  random_batch, schema, shapes)


@functools.cache
def tiny(**options):
  return build("ple", **{**PLE.TINY, **options})


def test_parameter_names_and_shapes():
  s = schema()
  params, stats = shapes("ple")
  f, d, t, m, x, y = 4 * 4 + 1, 3, 2, 2, 16, 8
  block = lambda shape_in, out, lead: {"kernel": lead + (shape_in, out), "bias": lead + (out,),
                                     "bn_scale": lead + (out,), "bn_bias": lead + (out,)}
  expected = {}
  for scope, shape in [("specific_experts", block(f, x, (d, t, m))),
                       ("shared_experts", block(f, x, (1,))),
                       ("gates", block(f, m + 1, (d, t))),
                       ("towers/hidden", block(x, y, (d, t)))]:
    expected.update({f"{scope}/{k}": v for k, v in shape.items()})
  expected.update({"towers/out/kernel": (d, t, y, 1), "towers/out/bias": (d, t, 1)})
  expected.update({f"embedding/{n}": (v, 4) for n, v in zip(s.sparse_names, s.vocab_sizes)})
  assert params == expected
  assert stats == {f"{scope}/{k}": shape[:-2] + shape[-1:]
                   for scope in ("specific_experts", "shared_experts", "gates", "towers/hidden")
                   for k, shape in [("bn_mean", expected[f"{scope}/kernel"]),
                                  ("bn_var", expected[f"{scope}/kernel"])]}


def test_several_levels_and_layers_are_named_per_level_and_layer():
  params, stats = shapes("ple", num_levels=3, num_specific_experts=2, num_shared_experts=3,
                         expert_dims=(12, 6), tower_dims=(5, 4))
  f, d, t, m, s = 4 * 4 + 1, 3, 2, 2, 3
  assert params["specific_experts/layer0/kernel"] == (d, t, m, f, 12)
  assert params["specific_experts/layer1/bn_scale"] == (d, t, m, 6)
  assert params["shared_experts/layer0/kernel"] == (s, f, 12)
  assert params["gates/kernel"] == (d, t, f, m + s)
  assert params["shared_gate/kernel"] == (f, d * t * m + s)        # not at the last level
  assert params["level1/specific_experts/layer0/kernel"] == (d, t, m, 6, 12)
  assert params["level1/shared_experts/layer1/kernel"] == (s, 12, 6)
  assert params["level1/gates/kernel"] == (d, t, 6, m + s)
  assert params["level1/shared_gate/bn_bias"] == (d * t * m + s,)
  assert params["level2/gates/kernel"] == (d, t, 6, m + s)
  assert not any(k.startswith("level2/shared_gate") for k in params)
  assert not any(k.startswith("level3") for k in params)
  assert params["towers/hidden/layer0/kernel"] == (d, t, 6, 5)
  assert params["towers/hidden/layer1/kernel"] == (d, t, 5, 4)
  assert params["towers/out/kernel"] == (d, t, 4, 1)
  assert stats["level1/shared_gate/bn_var"] == (d * t * m + s,)
  assert stats["towers/hidden/layer1/bn_mean"] == (d, t, 4)


@pytest.mark.parametrize("data, d, t, count", [
    (MOVIELENS, 1, 2, 10_298), (MOVIELENS, 3, 1, 14_519), (MOVIELENS, 3, 2, 27_182),
    (KUAIRAND, 1, 2, 47_364), (KUAIRAND, 3, 1, 66_670), (KUAIRAND, 3, 2, 124_588)])
def test_parameter_counts_match_the_spec(data, d, t, count):
  assert count_without_embeddings("ple", schema(num_domains=d, num_tasks=t, **data)) == count


def test_defaults_are_the_papers():
  model = build_model(model_config("ple"), schema())
  assert (model.num_levels, model.num_specific_experts, model.num_shared_experts,
          model.expert_dims, model.tower_dims) == (1, 2, 1, (16,), (8,))


def test_logits_and_gates_per_own_domain():
  model, variables, s = tiny()
  evaluate, train = jitted(model)
  batch = random_batch(s, 12)
  (logits, aux), _ = train(variables, batch)
  assert logits.shape == (12, 2) and logits.dtype == np.float32
  assert aux["gates"].shape == (12, 2, 3)
  np.testing.assert_allclose(aux["gates"].sum(-1), 1.0, atol=1e-6)
  other = dict(batch, domain=(batch["domain"] + 1) % 3)
  (changed, _), _ = train(variables, other)
  assert not np.allclose(changed, logits)


def test_every_head_is_selected_by_its_domain():
  check_output_bias_moves_only_its_head(*tiny())


@pytest.mark.parametrize("field, options", [
    ("num_levels", dict(num_levels=0)), ("num_specific_experts", dict(num_specific_experts=0)),
    ("num_shared_experts", dict(num_shared_experts=0)), ("expert_dims", dict(expert_dims=())),
    ("tower_dims", dict(tower_dims=(4, -1)))])
def test_bad_options_are_rejected_naming_the_field(field, options):
  check_rejected("ple", field, **options)


def test_batch_norm_ignores_padding_and_uses_running_stats_in_eval():
  check_padding_and_eval_mode(*tiny(num_levels=2))


# --- an independent re-implementation of the reference's PLE/CGC, head by head ------


def _bn(y):
  return (y - y.mean(0)) / np.sqrt(y.var(0) + 1e-5)


def _block(x, p, *idx):
  y = x @ p["kernel"][idx] + p["bias"][idx]
  return np.maximum(_bn(y) * p["bn_scale"][idx] + p["bn_bias"][idx], 0)


def _stack(x, named, scope, idx, layers):
  """The expert (or tower) BN-MLP: flat parameters for one layer, layer<k> otherwise."""
  for k in range(layers):
    p = {n: named[f"{scope}/{'' if layers == 1 else f'layer{k}/'}{n}"]
         for n in ("kernel", "bias", "bn_scale", "bn_bias")}
    x = _block(x, p, *idx)
  return x


def _gate(x, named, scope, *idx):
  y = x @ named[f"{scope}/kernel"][idx] + named[f"{scope}/bias"][idx]
  y = _bn(y) * named[f"{scope}/bn_scale"][idx] + named[f"{scope}/bn_bias"][idx]
  e = np.exp(y - y.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def reference_logits(named, batch, s, levels, m, n_shared, expert_layers, tower_layers):
  """Train-mode logits computed as the reference does: a flat list of G = D*T
  "tasks" (head (d, t) is task i = t*D + d), each with its own input."""
  D, T = s.num_domains, s.num_tasks
  G = D * T
  x = np.concatenate([named[f"embedding/{n}"][batch["sparse"][:, k]]
                      for k, n in enumerate(s.sparse_names)] + [batch["dense"]], 1)
  heads = [(i % D, i // D) for i in range(G)]
  inputs = [x] * (G + 1)
  for level in range(levels):
    pre = "" if level == 0 else f"level{level}/"
    specific = [_stack(inputs[i], named, pre + "specific_experts", (d, t, j), expert_layers)
                for i, (d, t) in enumerate(heads) for j in range(m)]
    shared = [_stack(inputs[-1], named, pre + "shared_experts", (k,), expert_layers)
              for k in range(n_shared)]
    outputs = []
    for i, (d, t) in enumerate(heads):
      g = _gate(inputs[i], named, pre + "gates", d, t)
      experts = specific[i * m:(i + 1) * m] + shared
      outputs.append(sum(g[:, n, None] * e for n, e in enumerate(experts)))
    if level < levels - 1:
      g = _gate(inputs[-1], named, pre + "shared_gate")
      outputs.append(sum(g[:, n, None] * e for n, e in enumerate(specific + shared)))
    inputs = outputs
  per_head = np.stack([
      (_stack(inputs[i], named, "towers/hidden", (d, t), tower_layers)
       @ named["towers/out/kernel"][d, t] + named["towers/out/bias"][d, t])[:, 0]
      for i, (d, t) in enumerate(heads)], 1)                                 # [B, G]
  rows = np.arange(len(x))
  return np.stack([per_head[rows, t * D + batch["domain"]] for t in range(T)], 1)


@pytest.mark.parametrize("options", [
    dict(num_levels=1),
    dict(num_levels=3, num_specific_experts=2, num_shared_experts=2, expert_dims=(6, 5),
         tower_dims=(4, 3))])
def test_matches_a_head_by_head_reimplementation(options):
  model, variables, s = build("ple", **{**PLE.TINY, **options})
  _, train = jitted(model)
  batch = random_batch(s, 16, seed=3)
  (logits, _), _ = train(variables, batch)
  named = {k: np.asarray(v, np.float64) for k, v in export_weights(variables["params"]).items()}
  want = reference_logits(
      named, batch, s, model.num_levels, model.num_specific_experts, model.num_shared_experts,
      len(model.expert_dims), len(model.tower_dims))
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
