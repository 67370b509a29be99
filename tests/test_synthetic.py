import numpy as np
import pytest

from configs import synthetic as synthetic_config
from m3oe_jax import train
from m3oe_jax.data.datasets import synthetic
from tests.helpers import tiny_data_config


def test_generator_is_deterministic_and_sized_by_config():
  a = synthetic.make_dataset(tiny_data_config(num_rows=1000))
  b = synthetic.make_dataset(tiny_data_config(num_rows=1000))
  assert [len(a.splits[s]) for s in ("train", "validation", "test")] == [800, 100, 100]
  for split in a.splits:
    for key, value in a.splits[split].columns.items():
      np.testing.assert_array_equal(value, b.splits[split].columns[key])
  assert a.schema.vocab_sizes == (13, 11, 5, 3)
  assert a.schema.sparse_names[-1] == "domain"
  columns = a.splits["train"].columns
  np.testing.assert_array_equal(columns["sparse"][:, -1], columns["domain"])
  a.schema.validate_columns(columns, "train")


def test_domain_skew_controls_domain_sizes():
  even = synthetic.generate(tiny_data_config(num_rows=20000, domain_skew=0.0))[1]["domain"]
  skewed = synthetic.generate(tiny_data_config(num_rows=20000, domain_skew=1.5))[1]["domain"]
  assert np.bincount(even).min() / np.bincount(even).max() > 0.9
  assert np.bincount(skewed)[0] / np.bincount(skewed)[2] > 10


def test_bad_generator_settings_name_the_field():
  with pytest.raises(ValueError, match="config.data.split"):
    synthetic.make_dataset(tiny_data_config(split=[0.5, 0.5, 0.5]))
  with pytest.raises(ValueError, match="config.data.num_domains"):
    synthetic.make_dataset(tiny_data_config(num_domains=0))


@pytest.mark.slow
def test_m3oe_reaches_bayes_optimal_auc_on_every_pair(tmp_path):
  result = train.train_and_evaluate(synthetic_config.get_config(), str(tmp_path))
  model, bayes = result["test"]["pairs"], result["bayes_optimal_test"]["pairs"]
  gaps = {pair: bayes[pair]["auc"] - model[pair]["auc"] for pair in model}
  assert len(gaps) == 6
  assert all(gap < 0.02 for gap in gaps.values()), gaps
