"""MMoE: parameter layout and counts, options, gates, and the BatchNorm tower."""

import functools

import jax
import numpy as np
import pytest

from m3oe_jax.models import build_model, export_weights, init_variables
from m3oe_jax.models.mmoe import MMoE
from tests.models.helpers import (KUAIRAND, MOVIELENS, build, check_output_bias_moves_only_its_head,
                                  check_padding_and_eval_mode, check_rejected,
                                  count_without_embeddings, jitted, model_config,
                                  random_batch, schema, shapes)

# --- MMoE ---------------------------------------------------------------------------


@functools.cache
def tiny(tower_norm):
  return build("mmoe", **MMoE.TINY, tower_norm=tower_norm)


def test_parameter_names_and_shapes():
  s = schema()
  params, stats = shapes("mmoe", fcn_dims=(16, 8), num_experts=4, tower_norm="layer")
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


def test_defaults_are_the_authors_baseline():
  # The authors' MMOE class, behind their baseline numbers, has BatchNorm towers.
  model = build_model(model_config("mmoe"), schema())
  assert (model.fcn_dims, model.num_experts, model.tower_norm) == ((256, 64), 4, "batch")


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
  np.testing.assert_array_equal(named["towers/hidden/bn_scale"], 1.0)
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
