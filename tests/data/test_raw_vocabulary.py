"""`config.data.vocabulary`: 'train' (OOV id 0 for unseen values) vs 'all_rows'."""

import os
import pathlib

import numpy as np
import pytest

from m3oe_jax.data import fake_raw, prepared
from m3oe_jax.data.datasets import kuairand, movielens
from m3oe_jax.data.raw import settings, storage
from m3oe_jax.data.raw import prepare as raw_prepare
from tests.data.helpers import (ML_MOVIES, ML_ORDER, ML_RATINGS, ML_USERS, movielens_config,
                                write_movielens_files)

# Two users (5, 6) and a movie (5) that occur only in the 3 latest ratings: with
# 23 rows and 8:1:1, train holds the 18 earliest, validation the next 2 (times
# 1180, 1190) and test these 3.
NEW_USERS = ["5::M::25::3::11111", "6::F::45::4::22222"]
NEW_MOVIES = ["5::Late Film (2000)::Drama|War"]
NEW_RATINGS = ["5::1::5::2000", "5::5::4::2001", "6::2::2::2002"]


@pytest.fixture(scope="module")
def late_users(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("vocab")
  ratings = ["::".join(map(str, ML_RATINGS[i])) for i in ML_ORDER] + NEW_RATINGS
  top = write_movielens_files(tmp / "raw", ratings=ratings, users=ML_USERS + NEW_USERS,
                              movies=ML_MOVIES + NEW_MOVIES)
  out = {}
  for vocabulary in ("train", "all_rows"):
    cfg = movielens_config(tmp / "tfds", extracted_dir=str(top), vocabulary=vocabulary)
    ds = prepared.load(cfg)
    path = pathlib.Path(os.fspath(prepared.make_builder(cfg).data_path))
    out[vocabulary] = ds, path
  return out


def _rows(ds, split):
  return ds.splits[split].take(np.arange(len(ds.splits[split])))


def _raw_test_rows():
  return [tuple(int(x) for x in r.split("::")[:2]) for r in NEW_RATINGS]


def test_train_vocabulary_maps_test_only_values_to_oov(late_users):
  ds, path = late_users["train"]
  s = ds.schema
  assert s.source["vocabulary"] == "train"
  assert s.vocab_sizes[:2] == (4 + 1, 4 + 1)  # users 1-4, movies 1-4
  assert np.load(path / storage.VOCAB_DIR / "user_id.npy").tolist() == [1, 2, 3, 4]
  test = _rows(ds, "test")
  assert len(test["domain"]) == 3
  assert test["sparse"][:, 0].tolist() == [0, 0, 0]  # users 5, 5, 6 collapse
  assert sorted(test["sparse"][:, 1].tolist())[0] == 0  # movie 5 is OOV
  assert s.source["oov_rows"]["test"]["user_id"] == 3
  assert s.source["oov_rows"]["test"]["movie_id"] == 1


def test_all_rows_vocabulary_gives_test_only_values_their_own_ids(late_users):
  ds, path = late_users["all_rows"]
  s = ds.schema
  assert s.source["vocabulary"] == "all_rows"
  assert s.vocab_sizes[:2] == (6 + 1, 5 + 1)  # users 1-6, movies 1-5
  users = np.load(path / storage.VOCAB_DIR / "user_id.npy")
  movies = np.load(path / storage.VOCAB_DIR / "movie_id.npy")
  assert users.tolist() == [1, 2, 3, 4, 5, 6] and movies.tolist() == [1, 2, 3, 4, 5]
  zips = np.load(path / storage.VOCAB_DIR / "zip.npy").tolist()
  assert "11111" in zips and "22222" in zips
  test = _rows(ds, "test")
  got = sorted((int(users[u - 1]), int(movies[m - 1]))
               for u, m in zip(test["sparse"][:, 0], test["sparse"][:, 1]))
  assert got == sorted(_raw_test_rows())  # every id maps back to its raw value
  uid = test["sparse"][:, 0]
  assert (uid > 0).all() and len(set(uid.tolist())) == 2  # users 5 and 6, distinct
  assert all(v == 0 for split in s.source["oov_rows"].values() for v in split.values())
  # the training split and dense statistics do not change
  train_ds, _ = late_users["train"]
  tr_all, tr_train = _rows(ds, "train"), _rows(train_ds, "train")
  np.testing.assert_array_equal(tr_all["dense"], tr_train["dense"])
  np.testing.assert_array_equal(tr_all["labels"], tr_train["labels"])
  assert s.source["dense_min"] == train_ds.schema.source["dense_min"]
  assert s.source["dense_max"] == train_ds.schema.source["dense_max"]


def test_the_two_options_prepare_into_separate_folders(late_users):
  (_, train_path), (_, all_path) = late_users["train"], late_users["all_rows"]
  assert train_path != all_path
  assert (train_path / storage.PREPARED_SCHEMA_FILE).exists()
  assert (all_path / storage.PREPARED_SCHEMA_FILE).exists()
  # the default keeps the config names (and folders) it had before the option
  assert movielens.make_config(vocabulary="train").name == "1m"
  assert movielens.make_config(vocabulary="all_rows").name.startswith("1m_")
  s = dict(movielens.make_config(split="random").settings)
  s.pop("vocabulary")
  assert movielens.make_config(split="random").name == "1m_" + settings.settings_hash(s)
  assert kuairand.make_config(vocabulary="train").name == "pure"
  assert kuairand.make_config(vocabulary="all_rows").name.startswith("pure_")
  # settings_from_config carries the option from config.data
  assert prepared.settings_from_config(movielens_config(
      "x", vocabulary="all_rows"))["vocabulary"] == "all_rows"


@pytest.mark.parametrize("make", [movielens.make_config, kuairand.make_config])
def test_bad_vocabulary_is_a_clear_error(make):
  with pytest.raises(ValueError, match=r"config\.data\.vocabulary.*'everything'"):
    make(vocabulary="everything")


def _spec(vocabulary):
  return raw_prepare.PrepareSpec(
      dataset="unit", sparse=(raw_prepare.FeatureDef("user", "int"),), dense_names=("x",),
      domain_names=("d0",), task_names=("t",), split="file_order",
      split_ratios=(8.0, 1.0, 1.0), split_seed=0, coders={}, source={},
      vocabulary=vocabulary)


@pytest.mark.parametrize("vocabulary", ["train", "all_rows"])
def test_prepare_unit_dense_statistics_stay_train_only(tmp_path, vocabulary):
  # 10 rows in file order: 8 train (users 10..17, x 0..7), 1 validation
  # (user 99, x 100), 1 test (user 50, x -10); tiny chunks cross the splits.
  users = np.array([10, 11, 12, 13, 14, 15, 16, 17, 99, 50], np.int64)
  x = np.array([0, 1, 2, 3, 4, 5, 6, 7, 100, -10], np.float64)
  chunk = raw_prepare.Chunk(
      domain=np.zeros(10, np.int32), labels=np.zeros((10, 1), np.uint8),
      sparse=users[:, None], dense=x[:, None], time=np.arange(10, dtype=np.int64),
      user=users, item=np.zeros(10, np.int64))
  meta = raw_prepare.prepare([chunk], _spec(vocabulary), str(tmp_path), chunk_rows=3)
  src = meta["schema"]["source"]
  assert src["dense_min"] == {"x": 0.0} and src["dense_max"] == {"x": 7.0}
  col = tmp_path / storage.COLUMNAR_DIR
  val, test = (np.load(col / k / "sparse.npy")[:, 0] for k in ("validation", "test"))
  if vocabulary == "train":
    assert meta["schema"]["vocab_sizes"] == [9]
    assert val.tolist() == [0] and test.tolist() == [0]
  else:
    assert meta["schema"]["vocab_sizes"] == [11]
    vocab = np.load(tmp_path / storage.VOCAB_DIR / "user.npy")
    assert vocab[val[0] - 1] == 99 and vocab[test[0] - 1] == 50
  np.testing.assert_allclose(np.load(col / "test" / "dense.npy")[:, 0], [-10 / 7],
                             rtol=1e-6)


def test_kuairand_all_rows_vocabulary_covers_every_split(tmp_path):
  top = fake_raw.write_kuairand(tmp_path / "raw", num_rows=600, num_users=40,
                                num_videos=400, seed=3)
  ds = {}
  for vocabulary in ("train", "all_rows"):
    ds[vocabulary] = prepared.load(kuairand_data_config(tmp_path, top, vocabulary))
  j = ds["train"].schema.sparse_names.index("video_id")
  assert ds["all_rows"].schema.source["vocabulary"] == "all_rows"
  # 400 videos over 600 rows: many occur only after the training cut
  assert ds["train"].schema.source["oov_rows"]["test"]["video_id"] > 0
  assert ds["all_rows"].schema.vocab_sizes[j] > ds["train"].schema.vocab_sizes[j]
  for split in ("train", "validation", "test"):
    rows = ds["all_rows"].splits[split].take(np.arange(len(ds["all_rows"].splits[split])))
    assert (rows["sparse"][:, j] > 0).all()
  assert all(v == 0 for split in ds["all_rows"].schema.source["oov_rows"].values()
             for v in split.values())


def kuairand_data_config(tmp_path, top, vocabulary):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(
      name="kuairand", data_dir=str(tmp_path / "tfds"), download=False, placement="host",
      extracted_dir=str(top), vocabulary=vocabulary))
