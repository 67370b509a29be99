"""The real-data configs, and a short training run on each tiny offline variant."""

import hashlib
import os

import numpy as np
import pytest

from configs import kuairand as kuairand_config
from configs import movielens as movielens_config
from m3oe_jax.data import load_dataset

CONFIGS = {"kuairand": kuairand_config, "movielens": movielens_config}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_paper_setup(name):
  c = CONFIGS[name].get_config()
  assert c.data.name == name
  assert c.optimizer.model_lr == 1e-2 and c.optimizer.arch_lr == 1e-3
  assert c.optimizer.weight_decay == 1e-5
  assert c.model.m3oe.num_shared_experts == 4 and c.model.embed_dim == 16
  assert list(c.model.m3oe.fcn_dims) == [512, 256, 256, 64]
  assert c.batch_size == 40960 and c.num_epochs == 50 and c.patience == 10
  assert "domain" in c.data.sparse_features
  assert c.data.split == "temporal" and list(c.data.split_ratios) == [8.0, 1.0, 1.0]
  assert c.data.archive == "" and c.data.extracted_dir == ""  # the real archive
  # the same sections as every experiment config
  synthetic = __import__("configs.synthetic", fromlist=["get_config"]).get_config()
  for section in ("model", "optimizer", "mesh"):
    assert set(c[section].keys()) == set(synthetic[section].keys()), section
  assert set(c.keys()) == set(synthetic.keys())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_variants(name):
  module = CONFIGS[name]
  for v in module.VARIANTS:
    c = module.get_config(v)
    uses_fake = bool(c.data.archive) or bool(c.data.extracted_dir)
    assert uses_fake == ("tiny" in v), v  # fake data only under a name that says so
  with pytest.raises(ValueError, match="unknown variant"):
    module.get_config("tiny")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_tiny_archive_checksum_matches_the_config(name):
  c = CONFIGS[name].get_config("tiny_offline")
  algo, _, want = c.data.archive_checksum.partition(":")
  with open(c.data.archive, "rb") as f:
    data = f.read()
  assert len(data) < 200_000  # keep the repo small
  assert hashlib.new(algo, data).hexdigest() == want, (
      "testdata changed: update the checksum in configs/ (python -m m3oe_jax.data.fake_raw "
      "prints it)")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_tiny_offline_short_training_run(name, tmp_path):
  train = pytest.importorskip("m3oe_jax.train")
  c = CONFIGS[name].get_config("tiny_offline")
  c.data.data_dir = str(tmp_path / "tfds")
  c.num_epochs = 2
  result = train.train_and_evaluate(c, str(tmp_path / "work"))
  test = result["test"]
  assert test, result
  ds = load_dataset(c.data)
  assert ds.schema.source["checksum"] == c.data.archive_checksum
  assert ds.schema.source["kind"] == "archive"
  # The checkpoint carries the schema, so the model can be evaluated without raw data.
  from m3oe_jax import params_io  # pylint: disable=g-import-not-at-top
  _, schema, _ = params_io.load_params(str(tmp_path / "work"))
  assert schema.model_signature() == ds.schema.model_signature()
  assert schema.source["checksum"] == c.data.archive_checksum
  assert schema.source["counts"] == ds.schema.source["counts"]
  flat = np.asarray([v for v in _numbers(test)])
  assert np.all(np.isfinite(flat))


def _numbers(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _numbers(v)
  elif isinstance(tree, (list, tuple)):
    for v in tree:
      yield from _numbers(v)
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield float(tree)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_unset_data_dir_follows_tfds_data_dir(name, tmp_path, monkeypatch):
  from m3oe_jax.data import prepared  # pylint: disable=g-import-not-at-top
  c = CONFIGS[name].get_config("tiny_offline")
  assert c.data.data_dir == ""  # TFDS's default, not a fixed folder
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "from_env"))
  builder = prepared.prepare(c.data)
  path = str(builder.data_path)
  assert path.startswith(str(tmp_path / "from_env") + "/"), path
  assert (tmp_path / "from_env").is_dir() and builder.data_path.exists()
  c.data.data_dir = str(tmp_path / "explicit")  # a set data_dir wins over the variable
  assert str(prepared.make_builder(c.data).data_path).startswith(str(tmp_path / "explicit"))
  monkeypatch.delenv("TFDS_DATA_DIR")
  c.data.data_dir = ""
  assert str(prepared.make_builder(c.data).data_path).startswith(
      os.path.expanduser("~/tensorflow_datasets/"))
