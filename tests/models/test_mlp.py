"""The MLP baseline (`Mlp_7_Layer`): names, shapes, sizes, head selection, the
reference's index bug option and option checks. The golden comparison is in
test_baselines_golden.py."""

import functools

import jax
import numpy as np
import pytest

from m3oe_jax.data.datasets import synthetic
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.models import build_model, export_weights, init_variables
from m3oe_jax.models.mlp import MLPBaseline, reference_head_table
from tests.helpers import batch_of, model_config, tiny_data_config


def build(num_domains=3, num_tasks=2, **options):
  """(model, params, dataset); cached, as initialisation compiles slowly on CPU."""
  return _build(num_domains, num_tasks, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=None)
def _build(num_domains, num_tasks, options):
  dataset = synthetic.make_dataset(tiny_data_config(num_domains=num_domains,
                                                    num_tasks=num_tasks))
  model = build_model(model_config("mlp", **dict(options)), dataset.schema)
  # The 'unsafe_rbg' generator compiles several times faster than threefry.
  key = jax.random.key(0, impl="unsafe_rbg")
  params = init_variables(model, dataset.schema, key)["params"]
  return model, params, dataset


def param_count(name, schema, **options):
  config = model_config(name, embed_dim=16, **options)
  model = build_model(config, schema)
  shapes = jax.eval_shape(lambda: init_variables(model, schema, jax.random.key(0)))
  return sum(int(np.prod(leaf.shape)) for scope, tree in shapes["params"].items()
             if scope != "embedding" for leaf in jax.tree.leaves(tree))


def schema(num_sparse, num_dense, num_domains, num_tasks):
  names = [f"f{i}" for i in range(num_sparse - 1)] + ["domain"]
  return FeatureSchema(sparse_names=names, vocab_sizes=[7] * (num_sparse - 1) + [num_domains],
                       dense_names=[f"x{i}" for i in range(num_dense)],
                       domain_names=[str(d) for d in range(num_domains)],
                       task_names=[str(t) for t in range(num_tasks)])


def test_names_and_shapes_are_stacked_per_domain_and_task():
  model, params, dataset = build(fcn_dims=(16, 8, 8, 6))
  named = export_weights(params)
  f = 4 * 4 + 1
  expected = {}
  for k, (i, o) in enumerate(zip((f, 16, 8, 8), (16, 8, 8, 6))):
    expected[f"nets/layer{k}/kernel"] = (3, 2, i, o)
    for leaf in ("bias", "ln_scale", "ln_bias"):
      expected[f"nets/layer{k}/{leaf}"] = (3, 2, o)
  expected["heads/hidden/kernel"] = (3, 2, 6, 6)
  for leaf in ("bias", "ln_scale", "ln_bias"):
    expected[f"heads/hidden/{leaf}"] = (3, 2, 6)
  expected["heads/out/kernel"] = (3, 2, 6, 1)
  expected["heads/out/bias"] = (3, 2, 1)
  got = {k: v.shape for k, v in named.items() if not k.startswith("embedding/")}
  assert got == expected
  # Every head is its own network, initialised independently, as torch.nn.Linear.
  kernels = named["nets/layer0/kernel"]
  assert not np.allclose(kernels[0, 0], kernels[1, 0])
  assert not np.allclose(kernels[0, 0], kernels[0, 1])
  assert np.abs(kernels).max() <= 1 / np.sqrt(f) and np.abs(kernels).max() > 0.8 / np.sqrt(f)
  assert np.abs(named["nets/layer1/bias"]).max() <= 1 / np.sqrt(16)
  np.testing.assert_array_equal(named["heads/hidden/ln_scale"], 1.0)
  np.testing.assert_array_equal(named["heads/hidden/ln_bias"], 0.0)


@pytest.mark.parametrize("sparse, dense, expected", [(7, 1, 278_465), (34, 0, 499_137)])
def test_parameter_counts_at_the_papers_sizes(sparse, dense, expected):
  # MovieLens F = 7*16 + 1 = 113, KuaiRand F = 34*16 = 544; one domain, one task.
  assert param_count("mlp", schema(sparse, dense, 1, 1)) == expected


def test_each_row_is_scored_by_its_own_domain_and_task_head():
  model, params, dataset = build(**MLPBaseline.TINY)
  batch = batch_of(dataset, 48)
  logits, aux = model.apply({"params": params}, batch)
  assert logits.shape == (48, 2) and aux == {}
  for d, t in [(0, 1), (2, 0)]:
    shifted = jax.tree.map(np.array, params)
    shifted["heads"]["out"]["bias"][d, t] += 1.0
    delta = np.asarray(model.apply({"params": shifted}, batch)[0] - logits)
    expected = np.zeros_like(delta)
    expected[batch["domain"] == d, t] = 1.0
    np.testing.assert_allclose(delta, expected, atol=1e-5)


def test_reference_head_table_matches_the_documented_bug():
  # Flat index i = t*D + d. D=3, T=2: task 1 uses [2,0], [0,1], [2,0].
  np.testing.assert_array_equal(reference_head_table(3, 2), [[0, 2], [1, 3], [2, 2]])
  for d in (1, 2, 3, 4):
    np.testing.assert_array_equal(  # harmless when T == 1 or T == D
        reference_head_table(d, 1), np.arange(d)[:, None])
  np.testing.assert_array_equal(reference_head_table(2, 2), [[0, 2], [1, 3]])


@pytest.mark.parametrize("domains, tasks, changes", [
    (3, 2, True), (2, 2, False), (3, 1, False), (1, 1, False)])
def test_index_bug_option_changes_predictions_only_when_domains_exceed_tasks(
    domains, tasks, changes):
  model, params, dataset = build(domains, tasks, **MLPBaseline.TINY)
  buggy = build_model(model_config("mlp", **MLPBaseline.TINY, reference_index_bug=True),
                      dataset.schema)
  batch = batch_of(dataset, 48)
  fixed_logits = np.asarray(model.apply({"params": params}, batch)[0])
  bug_logits = np.asarray(buggy.apply({"params": params}, batch)[0])
  assert (not np.allclose(fixed_logits, bug_logits)) == changes
  if changes:  # the documented symptom: domain-2 rows get the same net for both tasks
    rows = batch["domain"] == 2
    np.testing.assert_array_equal(bug_logits[rows, 0], bug_logits[rows, 1])
    np.testing.assert_array_equal(bug_logits[:, 0], fixed_logits[:, 0])


@pytest.mark.parametrize("options, field", [
    (dict(fcn_dims=(16, 0)), "config.model.mlp.fcn_dims"),
    (dict(fcn_dims=()), "config.model.mlp.fcn_dims"),
    (dict(reference_index_bug=True), "config.model.mlp.reference_index_bug"),
])
def test_bad_options_are_rejected_naming_the_field(options, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    build(1, 2, **options)  # one domain, two tasks: the reference's bug would crash
