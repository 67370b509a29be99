"""The shared embedding path: one-column features and multi-valued ones, whose
slots are mean-pooled (id 0 is no value), the same for every registered model."""

import jax
import numpy as np
import pytest

from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.models import MODELS, build_model, dummy_batch, init_variables
from m3oe_jax.models.layers import Embeddings
from tests.helpers import model_config


def _pooled(widths, sparse, rows_multiple=1):
  layer = Embeddings(("user", "tags"), (5, 7), 3, 1.0, rows_multiple, widths=widths)
  dense = np.zeros((len(sparse), 1), np.float32)
  params = layer.init(jax.random.key(0), sparse, dense)
  return np.asarray(layer.apply(params, sparse, dense)), params["params"]


@pytest.mark.parametrize("rows_multiple", [1, 4])
def test_a_multi_valued_feature_is_the_mean_of_its_known_ids(rows_multiple):
  sparse = np.array([[1, 2, 3, 0], [4, 5, 0, 0], [2, 0, 0, 0], [3, 6, 6, 6]], np.int32)
  out, params = _pooled((1, 3), sparse, rows_multiple)
  user, tags = np.asarray(params["user"]), np.asarray(params["tags"])
  assert tags.shape[0] % rows_multiple == 0
  np.testing.assert_allclose(out[:, :3], user[sparse[:, 0]], rtol=1e-6)
  np.testing.assert_allclose(out[0, 3:6], tags[[2, 3]].mean(0), rtol=1e-6)
  np.testing.assert_allclose(out[1, 3:6], tags[5], rtol=1e-6)
  np.testing.assert_allclose(out[2, 3:6], tags[0], rtol=1e-6)  # no value: row 0
  np.testing.assert_allclose(out[3, 3:6], tags[6], rtol=1e-6)
  assert out.shape == (4, 7)


def test_one_column_features_are_unchanged_by_empty_widths():
  sparse = np.array([[1, 2], [4, 6]], np.int32)
  a, _ = _pooled((), sparse)
  b, _ = _pooled((1, 1), sparse)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_reads_multi_valued_features(name):
  schema = FeatureSchema(sparse_names=("user", "tags", "domain"), vocab_sizes=(9, 12, 2),
                         dense_names=("x",), domain_names=("a", "b"), task_names=("t",),
                         sparse_widths=(1, 4, 1))
  model = build_model(model_config(name), schema)
  variables = init_variables(model, schema, jax.random.key(0))
  batch = dummy_batch(schema, 4)
  assert batch["sparse"].shape == (4, 6)
  batch["sparse"][:, 1:5] = [[1, 2, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0], [4, 5, 6, 7]]
  batch["domain"][:] = [0, 1, 0, 1]
  logits, _ = model.apply(variables, batch, train=False)
  assert logits.shape == (4, 1) and np.all(np.isfinite(np.asarray(logits)))
  tables = variables["params"]["embedding"]
  assert tables["tags"].shape[0] == 12
