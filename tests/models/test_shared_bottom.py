"""Shared-Bottom: parameter layout and counts, options, the forward pass against
plain numpy, and BatchNorm with padding and in eval mode."""

import functools

import numpy as np
import pytest

from m3oe_jax.models import build_model, export_weights
from m3oe_jax.models.shared_bottom import SharedBottom
from tests.models.helpers import (KUAIRAND, MOVIELENS, build, check_output_bias_moves_only_its_head,
                                  check_padding_and_eval_mode, check_rejected,
                                  count_without_embeddings, jitted, model_config,
                                  random_batch, schema, shapes)


@functools.cache
def tiny(**options):
  return build("shared_bottom", **{**SharedBottom.TINY, **options})


def test_parameter_names_and_shapes():
  s = schema()
  params, stats = shapes("shared_bottom")
  f, d, t = 4 * 4 + 1, 3, 2
  expected = {
      "bottom/layer0/kernel": (f, 128), "bottom/layer0/bias": (128,),
      "bottom/layer0/bn_scale": (128,), "bottom/layer0/bn_bias": (128,),
      "towers/hidden/kernel": (d, t, 128, 8), "towers/hidden/bias": (d, t, 8),
      "towers/hidden/bn_scale": (d, t, 8), "towers/hidden/bn_bias": (d, t, 8),
      "towers/out/kernel": (d, t, 8, 1), "towers/out/bias": (d, t, 1),
  }
  expected.update({f"embedding/{n}": (v, 4) for n, v in zip(s.sparse_names, s.vocab_sizes)})
  assert params == expected
  assert stats == {"bottom/layer0/bn_mean": (128,), "bottom/layer0/bn_var": (128,),
                   "towers/hidden/bn_mean": (d, t, 8), "towers/hidden/bn_var": (d, t, 8)}


def test_layer_norm_and_several_layers():
  params, stats = shapes("shared_bottom", bottom_dims=(32, 16), tower_dims=(8, 4), norm="layer")
  assert stats == {}
  assert params["bottom/layer0/ln_scale"] == (32,)
  assert params["bottom/layer1/kernel"] == (32, 16)
  assert params["towers/hidden/layer0/kernel"] == (3, 2, 16, 8)
  assert params["towers/hidden/layer1/ln_bias"] == (3, 2, 4)
  assert params["towers/out/kernel"] == (3, 2, 4, 1)
  assert not any("bn_" in k for k in params)


@pytest.mark.parametrize("data, d, t, count", [
    (MOVIELENS, 1, 2, 16_962), (MOVIELENS, 3, 1, 18_019), (MOVIELENS, 3, 2, 21_190),
    (KUAIRAND, 1, 2, 72_130), (KUAIRAND, 3, 1, 73_187), (KUAIRAND, 3, 2, 76_358)])
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_parameter_counts_match_the_spec(data, d, t, count, norm):
  s = schema(num_domains=d, num_tasks=t, **data)
  assert count_without_embeddings("shared_bottom", s, norm=norm) == count


def test_defaults_are_the_specs():
  model = build_model(model_config("shared_bottom"), schema())
  assert (model.bottom_dims, model.tower_dims, model.norm) == ((128,), (8,), "batch")


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_matches_numpy(norm):
  model, variables, s = tiny(norm=norm)
  _, train = jitted(model)
  batch = random_batch(s, 12, seed=4)
  (logits, aux), _ = train(variables, batch)
  assert logits.shape == (12, 2) and aux == {}
  named = {k: np.asarray(v, np.float64) for k, v in export_weights(variables["params"]).items()}
  axis = 0 if norm == "batch" else -1
  n = "bn" if norm == "batch" else "ln"

  def block(x, scope, *idx):
    y = x @ named[f"{scope}/kernel"][idx] + named[f"{scope}/bias"][idx]
    y = (y - y.mean(axis, keepdims=True)) / np.sqrt(y.var(axis, keepdims=True) + 1e-5)
    return np.maximum(y * named[f"{scope}/{n}_scale"][idx] + named[f"{scope}/{n}_bias"][idx], 0)

  x = np.concatenate([named[f"embedding/{f}"][batch["sparse"][:, k]]
                      for k, f in enumerate(s.sparse_names)] + [batch["dense"]], 1)
  z = block(x, "bottom/layer0")
  want = np.zeros((12, 2))
  for b in range(12):
    d = batch["domain"][b]
    for t in range(2):  # the tower of (d, t) normalises over the whole batch
      h = block(z, "towers/hidden", d, t)
      want[b, t] = (h @ named["towers/out/kernel"][d, t] + named["towers/out/bias"][d, t])[b, 0]
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def test_every_head_is_selected_by_its_domain():
  check_output_bias_moves_only_its_head(*tiny(norm="layer"))


@pytest.mark.parametrize("field, options", [
    ("bottom_dims", dict(bottom_dims=())), ("bottom_dims", dict(bottom_dims=(0,))),
    ("tower_dims", dict(tower_dims=(8, 2.5))), ("norm", dict(norm="instance"))])
def test_bad_options_are_rejected_naming_the_field(field, options):
  check_rejected("shared_bottom", field, **options)


def test_batch_norm_ignores_padding_and_uses_running_stats_in_eval():
  check_padding_and_eval_mode(*tiny())
