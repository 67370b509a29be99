"""Table 2's variants as views of one prepared dataset."""

import numpy as np
import pytest

from m3oe_jax.data import variants
from m3oe_jax.data.datasets import synthetic
from tests.helpers import tiny_data_config


@pytest.fixture(scope="module")
def dataset():
  return synthetic.make_dataset(tiny_data_config(num_rows=900))


def _rows(source):
  return source.take(np.arange(len(source)))


def test_all_domains_and_tasks_is_the_dataset_itself(dataset):
  assert variants.select(dataset) is dataset


def test_one_domain_keeps_its_rows_renumbered_and_named(dataset):
  name = dataset.schema.domain_names[2]
  mtl = variants.select(dataset, domains=(2,))
  assert mtl.schema.domain_names == (name,)
  assert mtl.schema.task_names == dataset.schema.task_names
  for split, source in dataset.splits.items():
    full = _rows(source)
    kept = _rows(mtl.splits[split])
    rows = full["domain"] == 2
    np.testing.assert_array_equal(kept["sparse"], full["sparse"][rows])
    np.testing.assert_array_equal(kept["labels"], full["labels"][rows])
    assert np.all(kept["domain"] == 0)
    np.testing.assert_array_equal(mtl.true_probs[split], dataset.true_probs[split][rows])
  assert mtl.schema.source["variant"]["domains"] == [name]


def test_one_task_by_name_and_domains_in_the_given_order(dataset):
  task = dataset.schema.task_names[1]
  view = variants.select(dataset, domains=(dataset.schema.domain_names[1], 0), tasks=(task,))
  assert view.schema.task_names == (task,)
  full, kept = _rows(dataset.splits["test"]), _rows(view.splits["test"])
  rows = np.isin(full["domain"], [0, 1])
  np.testing.assert_array_equal(kept["labels"], full["labels"][rows][:, [1]])
  np.testing.assert_array_equal(kept["domain"], np.where(full["domain"][rows] == 1, 0, 1))


def test_per_variant_split_filters_first_then_cuts_in_order(dataset):
  view = variants.select(dataset, domains=(0,), per_variant_split=True)
  whole = [_rows(dataset.splits[s]) for s in ("train", "validation", "test")]
  sparse = np.concatenate([w["sparse"] for w in whole])
  domain = np.concatenate([w["domain"] for w in whole])
  kept = sparse[domain == 0]
  again = np.concatenate([_rows(view.splits[s])["sparse"]
                          for s in ("train", "validation", "test")])
  np.testing.assert_array_equal(again, kept)
  sizes = [len(view.splits[s]) for s in ("train", "validation", "test")]
  assert abs(sizes[0] / sum(sizes) - 0.8) < 0.01


@pytest.mark.parametrize("domains, tasks, message", [
    ((5,), (), "config.variant.domains: index 5 is out of range"),
    (("nowhere",), (), "config.variant.domains: 'nowhere' is neither"),
    ((), (0, 0), "config.variant.tasks: 0 is listed twice"),
])
def test_bad_selections_name_the_field(dataset, domains, tasks, message):
  with pytest.raises(ValueError, match=message):
    variants.select(dataset, domains, tasks)
