"""MovieLens-1M through the real TFDS builder, on tiny files in the original format."""

import dataclasses
import json
import logging
import os
import pathlib

import numpy as np
import pytest

from m3oe_jax import data
from m3oe_jax.data import fake_raw, pipeline
from m3oe_jax.data import prepared as prepared_data
from m3oe_jax.data.datasets import movielens
from m3oe_jax.data.raw import RawDataError, sources, storage
from tests.data.helpers import (ML_ORDER, ML_RATINGS, ML_USERS, movielens_config,
                                write_movielens_files)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("ml")
  top = write_movielens_files(tmp / "raw")
  return prepared_data.load(movielens_config(tmp / "tfds", extracted_dir=str(top))), tmp


def _rows_of(ds, split):
  return ds.splits[split].take(np.arange(len(ds.splits[split])))


def test_split_sizes_domains_and_thresholds(prepared):
  ds, _ = prepared
  s = ds.schema
  assert s.domain_names == ("age_1_18", "age_25", "age_35_45_50_56")
  assert s.task_names == ("click", "like")
  assert s.sparse_names == ("user_id", "movie_id", "gender", "occupation", "zip",
                            "genre", "domain")
  assert s.dense_names == ("age",)
  assert [len(ds.splits[k]) for k in pipeline.SPLITS] == [16, 2, 2]
  # Temporal: the test split holds the two latest ratings (timestamps 1180, 1190).
  by_time = sorted(ML_RATINGS, key=lambda r: (r[3], r[0], r[1]))
  age = {1: 1, 2: 25, 3: 35, 4: 56}
  domain_of_age = {1: 0, 18: 0, 25: 1, 35: 2, 45: 2, 50: 2, 56: 2}
  for split, rows in (("train", by_time[:16]), ("validation", by_time[16:18]),
                      ("test", by_time[18:])):
    got = _rows_of(ds, split)
    # rows keep file order within a split; compare as multisets of (domain, labels)
    want = sorted((domain_of_age[age[u]], float(r > 3), float(r > 4)) for u, _, r, _ in rows)
    have = sorted(zip(got["domain"].tolist(), got["labels"][:, 0].tolist(),
                      got["labels"][:, 1].tolist()))
    assert have == want, split
  # The domain sparse feature is the domain id shifted past the OOV id.
  train = _rows_of(ds, "train")
  np.testing.assert_array_equal(train["sparse"][:, 6], train["domain"] + 1)


def test_vocabularies_from_training_split_with_oov(prepared):
  ds, tmp = prepared
  s = ds.schema
  by_time = sorted(ML_RATINGS, key=lambda r: (r[3], r[0], r[1]))
  train_users = {r[0] for r in by_time[:16]}
  train_movies = {r[1] for r in by_time[:16]}
  assert s.vocab_sizes[0] == len(train_users) + 1
  assert s.vocab_sizes[1] == len(train_movies) + 1
  vocab_dir = pathlib.Path(os.fspath(prepared_data.make_builder(movielens_config(
      tmp / "tfds", extracted_dir="x")).data_path)) / storage.VOCAB_DIR
  movies_vocab = np.load(vocab_dir / "movie_id.npy")
  assert movies_vocab.tolist() == sorted(train_movies)
  genres = np.load(vocab_dir / "genre.npy").tolist()
  assert set(genres) == {"Animation", "Adventure", "Comedy"}
  for split in ("validation", "test"):
    rows = _rows_of(ds, split)
    for uid, mid in zip(rows["sparse"][:, 0], rows["sparse"][:, 1]):
      assert 0 <= uid < s.vocab_sizes[0] and 0 <= mid < s.vocab_sizes[1]
  # Every id maps back to its raw value; ids of values unseen in training are 0.
  test = _rows_of(ds, "test")
  assert sorted(int(movies_vocab[m - 1]) for m in test["sparse"][:, 1]) == [1, 4]
  # Dense age: min-max over the training rows (ages 1..56 all in training).
  train = _rows_of(ds, "train")
  assert train["dense"].min() == 0.0 and train["dense"].max() == 1.0
  assert s.source["dense_min"] == {"age": 1.0} and s.source["dense_max"] == {"age": 56.0}


def test_oov_for_values_only_in_later_splits(tmp_path):
  # user 5 (age 25) only rates at the very end: it must be out of vocabulary.
  users = ML_USERS + ["5::M::25::3::11111"]
  ratings = ["::".join(map(str, ML_RATINGS[i])) for i in ML_ORDER] + [
      "5::1::5::2000", "5::2::4::2001"]
  top = write_movielens_files(tmp_path / "raw", ratings=ratings, users=users)
  ds = prepared_data.load(movielens_config(tmp_path / "tfds", extracted_dir=str(top)))
  test = _rows_of(ds, "test")
  assert len(test["domain"]) == 3
  # The last two ratings (user 5) are in the test split with user id OOV.
  assert sorted(test["sparse"][:, 0].tolist())[:2] == [0, 0]
  assert ds.schema.source["oov_rows"]["test"]["user_id"] == 2
  assert ds.schema.source["oov_rows"]["train"]["user_id"] == 0


def test_counts_and_positive_rates_recorded_and_printed(prepared, capsys, tmp_path):
  ds, _ = prepared
  counts = ds.schema.source["counts"]
  total = sum(counts[s][d]["rows"] for s in counts for d in counts[s])
  assert total == len(ML_RATINGS)
  train = _rows_of(ds, "train")
  for d, name in enumerate(ds.schema.domain_names):
    m = train["domain"] == d
    assert counts["train"][name]["rows"] == int(m.sum())
    assert counts["train"][name]["positive_rate"]["click"] == pytest.approx(
        train["labels"][m, 0].mean())
  # printed when preparing
  top = write_movielens_files(tmp_path / "raw")
  prepared_data.load(movielens_config(tmp_path / "tfds", extracted_dir=str(top)))
  out = capsys.readouterr().out
  assert "positive rates per (domain, task)" in out and "age_35_45_50_56" in out


def test_archive_checksum_source_recorded_and_no_raw_needed_later(tmp_path):
  top = write_movielens_files(tmp_path / "raw")
  archive = fake_raw.pack_zip(top, tmp_path / "ml-1m-test.zip")
  sha = "sha256:" + sources.file_checksum(archive, "sha256")
  cfg = movielens_config(tmp_path / "tfds", archive=str(archive), archive_checksum=sha)
  ds = prepared_data.load(cfg)
  assert ds.schema.source["kind"] == "archive"
  assert ds.schema.source["checksum"] == sha
  assert ds.schema.source["builder"] == "m3oe_movielens1m"
  # Not the official archive: not the paper's data (the report shows no paper numbers).
  assert not data.is_paper_data("movielens", ds.schema)
  official = movielens.PAPER_ARCHIVE.checksum
  assert data.is_paper_data("movielens", dataclasses.replace(ds.schema, source={**ds.schema.source,
                                                                   "checksum": official}))
  # The raw files are gone: loading again reads only the prepared data.
  os.remove(archive)
  again = prepared_data.load(cfg)
  assert again.schema == ds.schema
  for split in pipeline.SPLITS:
    a, b = _rows_of(ds, split), _rows_of(again, split)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_manual_dir_archive_and_extracted_folder_warning(tmp_path, caplog):
  top = write_movielens_files(tmp_path / "manual")  # manual/ml-1m/ : extracted layout
  with caplog.at_level(logging.WARNING):
    ds = prepared_data.load(movielens_config(tmp_path / "tfds",
                                             manual_dir=str(tmp_path / "manual")))
  assert ds.schema.source["kind"] == "extracted"
  assert "no checksum was checked" in caplog.text
  # The official archive name in the manual dir is verified against the official
  # checksum: a different file with that name is refused.
  fake_raw.pack_zip(top, tmp_path / "manual" / "ml-1m.zip")
  with pytest.raises(RawDataError, match="checksum mismatch"):
    prepared_data.load(movielens_config(tmp_path / "tfds2", manual_dir=str(tmp_path / "manual")))


def test_determinism_same_bytes_same_dataset(tmp_path):
  top = fake_raw.write_movielens(tmp_path / "raw", num_ratings=800, seed=3)
  outs = []
  for i in range(2):
    d = tmp_path / f"tfds{i}"
    ds = prepared_data.load(movielens_config(d, extracted_dir=str(top)))
    builder = prepared_data.make_builder(movielens_config(d, extracted_dir=str(top)))
    outs.append((ds, pathlib.Path(os.fspath(builder.data_path))))
  (a, pa_), (b, pb) = outs
  assert a.schema.model_signature() == b.schema.model_signature()
  assert a.schema.source["counts"] == b.schema.source["counts"]
  for split in pipeline.SPLITS:
    ra, rb = _rows_of(a, split), _rows_of(b, split)
    for k in ra:
      np.testing.assert_array_equal(ra[k], rb[k])
  for f in sorted((pa_ / storage.VOCAB_DIR).iterdir()):
    np.testing.assert_array_equal(np.load(f), np.load(pb / storage.VOCAB_DIR / f.name))
  # array_record files hold the same rows as the columnar files
  names = sorted(p.name for p in pa_.glob("*.array_record*"))
  assert names and all((pa_ / n).read_bytes() == (pb / n).read_bytes() for n in names)


def test_tfds_array_record_matches_columnar(prepared):
  ds, tmp = prepared
  builder = prepared_data.make_builder(movielens_config(tmp / "tfds", extracted_dir="x"))
  for split in pipeline.SPLITS:
    cols = prepared_data.read_split_from_tfds(builder, split)
    rows = _rows_of(ds, split)
    for k in rows:
      np.testing.assert_array_equal(cols[k], rows[k])


def test_random_and_file_order_splits(tmp_path):
  top = fake_raw.write_movielens(tmp_path / "raw", num_ratings=500, seed=4)
  def load(**kw):
    return prepared_data.load(movielens_config(tmp_path / "tfds", extracted_dir=str(top), **kw))
  r0 = load(split="random", split_seed=0, split_ratios=[6, 2, 2])
  r0b = load(split="random", split_seed=0, split_ratios=[6, 2, 2])
  r1 = load(split="random", split_seed=1, split_ratios=[6, 2, 2])
  assert [len(r0.splits[s]) for s in pipeline.SPLITS] == [300, 100, 100]
  t0, t0b, t1 = (_rows_of(x, "test") for x in (r0, r0b, r1))
  np.testing.assert_array_equal(t0["sparse"], t0b["sparse"])
  assert not np.array_equal(t0["sparse"][:, :2], t1["sparse"][:, :2])
  # file order: the test split is the last 10% of ratings.dat
  fo = load(split="file_order")
  lines = (top / "ratings.dat").read_text("latin-1").splitlines()
  last = [int(l.split("::")[2]) for l in lines[450:]]
  np.testing.assert_array_equal(_rows_of(fo, "test")["labels"][:, 0],
                                np.array(last) > 3)


def test_placements_give_the_same_batches(tmp_path):
  top = fake_raw.write_movielens(tmp_path / "raw", num_ratings=400, seed=5)
  batches = {}
  for placement in ("host", "stream", "device"):
    ds = prepared_data.load(movielens_config(tmp_path / "tfds", extracted_dir=str(top),
                                             placement=placement))
    b = pipeline.shuffled_batch(ds.splits["train"], 64, seed=1, position=2)
    batches[placement] = {k: np.asarray(v) for k, v in b.items()}
  for placement in ("stream", "device"):
    for k in batches["host"]:
      np.testing.assert_array_equal(batches["host"][k], batches[placement][k])
  # each of two processes gathers only its half of the global batch
  ds = prepared_data.load(movielens_config(tmp_path / "tfds", extracted_dir=str(top),
                                           placement="stream"))
  halves = [pipeline.shuffled_batch(ds.splits["train"], 64, 1, 2, p, 2) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h["sparse"] for h in halves]),
                                batches["host"]["sparse"])


def test_schema_json_written_next_to_data(prepared):
  ds, tmp = prepared
  builder = prepared_data.make_builder(movielens_config(tmp / "tfds", extracted_dir="x"))
  path = pathlib.Path(os.fspath(builder.data_path))
  on_disk = json.loads((path / storage.PREPARED_SCHEMA_FILE).read_text())
  assert on_disk["vocab_sizes"] == list(ds.schema.vocab_sizes)
  assert builder.info.metadata["schema"]["domain_names"] == list(ds.schema.domain_names)


def test_single_task_and_custom_age_groups(tmp_path):
  top = write_movielens_files(tmp_path / "raw")
  ds = prepared_data.load(movielens_config(tmp_path / "tfds", extracted_dir=str(top),
                                           tasks=["like"], task_thresholds=[4],
                                           age_groups=[[1], [25, 35], [56]]))
  assert ds.schema.task_names == ("like",)
  assert ds.schema.domain_names == ("age_1", "age_25_35", "age_56")
  rows = {s: _rows_of(ds, s) for s in pipeline.SPLITS}
  assert rows["train"]["labels"].shape[1] == 1
  labels = np.concatenate([rows[s]["labels"][:, 0] for s in pipeline.SPLITS])
  assert labels.sum() == sum(1 for r in ML_RATINGS if r[2] > 4)
  domains = np.concatenate([rows[s]["domain"] for s in pipeline.SPLITS])
  want = {1: 0, 2: 1, 3: 1, 4: 2}
  assert sorted(domains.tolist()) == sorted(want[r[0]] for r in ML_RATINGS)
