"""KuaiRand through the real TFDS builder, on tiny logs in the original format.

Expectations are computed independently with the `csv` module from the same
files: tab choice, domains, labels, the temporal cut, vocabularies and OOV.
"""

import collections
import csv
import os
import pathlib
import shutil

import numpy as np
import pytest

from m3oe_jax.data import fake_raw, pipeline, prepared
from m3oe_jax.data.datasets import kuairand
from m3oe_jax.data.raw import RawDataError, sources, storage
from m3oe_jax.data.raw import text as raw_text
from m3oe_jax.data.raw.builder import RawTableBuilder
from tests.data.helpers import raw_data_config


def data_config(data_dir, **kw):
  return raw_data_config("kuairand", data_dir, **kw)


def read_logs(top):
  rows = []
  for name in ("log_standard_4_08_to_4_21_pure.csv", "log_standard_4_22_to_5_08_pure.csv",
               "log_random_4_22_to_5_08_pure.csv"):
    with open(top / "data" / name, newline="") as f:
      rows.extend(csv.DictReader(f))
  return rows


def expected(rows, tabs, ratios=(8, 1, 1)):
  kept = [r for r in rows if int(r["tab"]) in tabs]
  order = sorted(range(len(kept)), key=lambda i: (int(kept[i]["time_ms"]),
                                                   int(kept[i]["user_id"]),
                                                   int(kept[i]["video_id"]), i))
  n = len(kept)
  n_train = int(n * ratios[0] / sum(ratios))
  n_val = int(n * ratios[1] / sum(ratios))
  part = {}
  for rank, i in enumerate(order):
    part[i] = 0 if rank < n_train else (1 if rank < n_train + n_val else 2)
  return kept, part


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("kr")
  top = fake_raw.write_kuairand(tmp / "raw", num_rows=900, num_users=40, num_videos=90,
                                seed=7)
  ds = prepared.load(data_config(tmp / "tfds", extracted_dir=str(top)))
  return ds, top, tmp


def _all(ds, split):
  return ds.splits[split].take(np.arange(len(ds.splits[split])))


def test_auto_tabs_domains_tasks_and_split(tiny):
  ds, top, _ = tiny
  rows = read_logs(top)
  counts = collections.Counter(int(r["tab"]) for r in rows)
  top3 = sorted(sorted(counts, key=lambda t: (-counts[t], t))[:3])
  assert ds.schema.domain_names == tuple(f"tab{t}" for t in top3)
  assert ds.schema.source["tabs"] == top3
  assert ds.schema.task_names == ("is_click", "long_view")
  kept, part = expected(rows, top3)
  sizes = [sum(1 for p in part.values() if p == k) for k in range(3)]
  assert [len(ds.splits[s]) for s in pipeline.SPLITS] == sizes
  for k, split in enumerate(pipeline.SPLITS):
    got = _all(ds, split)
    # rows keep file order within a split
    want = [kept[i] for i in range(len(kept)) if part[i] == k]
    np.testing.assert_array_equal(got["domain"], [top3.index(int(r["tab"])) for r in want])
    np.testing.assert_array_equal(got["labels"], [[float(r["is_click"]), float(r["long_view"])]
                                                  for r in want])
    hour = ds.schema.sparse_names.index("hour")
    vocab = np.load(_path(tiny) / storage.VOCAB_DIR / "hour.npy")
    ids = got["sparse"][:, hour]
    raw = np.array([int(r["hourmin"]) // 100 for r in want])
    np.testing.assert_array_equal(np.where(ids > 0, vocab[np.maximum(ids - 1, 0)], -1),
                                  np.where(np.isin(raw, vocab), raw, -1))
  counts_meta = ds.schema.source["counts"]
  for k, split in enumerate(pipeline.SPLITS):
    for d, t in enumerate(top3):
      want = [kept[i] for i in range(len(kept)) if part[i] == k and int(kept[i]["tab"]) == t]
      c = counts_meta[split][f"tab{t}"]
      assert c["rows"] == len(want)
      assert c["positives"]["is_click"] == sum(int(r["is_click"]) for r in want)


def _path(tiny):
  _, top, tmp = tiny
  b = prepared.make_builder(data_config(tmp / "tfds", extracted_dir=str(top)))
  return pathlib.Path(os.fspath(b.data_path))


def test_vocabulary_from_train_only_and_oov(tiny):
  ds, top, _ = tiny
  rows = read_logs(top)
  top3 = ds.schema.source["tabs"]
  kept, part = expected(rows, top3)
  train_videos = sorted({int(r["video_id"]) for i, r in enumerate(kept) if part[i] == 0})
  j = ds.schema.sparse_names.index("video_id")
  assert ds.schema.vocab_sizes[j] == len(train_videos) + 1
  vocab = np.load(_path(tiny) / storage.VOCAB_DIR / "video_id.npy")
  assert vocab.tolist() == train_videos
  for k, split in enumerate(pipeline.SPLITS):
    want = [int(r["video_id"]) for i, r in enumerate(kept) if part[i] == k]
    want_ids = [train_videos.index(v) + 1 if v in train_videos else 0 for v in want]
    np.testing.assert_array_equal(_all(ds, split)["sparse"][:, j], want_ids)
  assert sum(ds.schema.source["oov_rows"]["test"].values()) >= 0
  # string features: the vocabulary lists the strings seen in training
  deg = np.load(_path(tiny) / storage.VOCAB_DIR / "user_active_degree.npy").tolist()
  assert set(deg) <= {"high_active", "full_active", "middle_active", "UNKNOWN"}
  # dense: log1p then min-max on the training rows
  train = _all(ds, "train")
  assert train["dense"].min() >= 0.0 and train["dense"].max() <= 1.0
  assert np.allclose(train["dense"].min(axis=0), 0) and np.allclose(train["dense"].max(0), 1)


def test_explicit_tabs_other_tasks_and_random_split(tiny):
  _, top, tmp = tiny
  ds = prepared.load(data_config(tmp / "tfds", extracted_dir=str(top), tabs=[4, 0],
                                 tasks=["is_like", "is_click", "long_view"],
                                 split="random", split_seed=3,
                                 sparse_features=["user_id", "video_id", "domain"],
                                 dense_features=[]))
  assert ds.schema.domain_names == ("tab4", "tab0")
  assert ds.schema.task_names == ("is_like", "is_click", "long_view")
  assert ds.schema.num_dense == 0
  rows = [r for r in read_logs(top) if int(r["tab"]) in (4, 0)]
  n = len(rows)
  assert sum(len(ds.splits[s]) for s in pipeline.SPLITS) == n
  assert len(ds.splits["train"]) == int(n * 0.8)
  got = np.concatenate([_all(ds, s)["domain"] for s in pipeline.SPLITS])
  assert sorted(got.tolist()) == sorted([0 if int(r["tab"]) == 4 else 1 for r in rows])
  likes = np.concatenate([_all(ds, s)["labels"][:, 0] for s in pipeline.SPLITS])
  assert likes.sum() == sum(int(r["is_like"]) for r in rows)


def test_streaming_chunk_sizes_do_not_change_the_output(tiny, monkeypatch):
  ds, top, tmp = tiny
  monkeypatch.setattr(raw_text, "READ_BLOCK_BYTES", 777)  # many tiny parse blocks
  monkeypatch.setattr(RawTableBuilder, "SHARD_ROWS", 100)  # many TFDS shards
  cfg = data_config(tmp / "tfds_small", extracted_dir=str(top), chunk_rows=50)
  small = prepared.load(cfg)
  builder = prepared.make_builder(cfg)
  assert len(list(pathlib.Path(os.fspath(builder.data_path)).glob("*train.array_record*"))) > 3
  for split in pipeline.SPLITS:
    cols = prepared.read_split_from_tfds(builder, split)
    for k, v in _all(ds, split).items():
      np.testing.assert_array_equal(cols[k], v)
  assert small.schema.model_signature() == ds.schema.model_signature()
  for split in pipeline.SPLITS:
    a, b = _all(ds, split), _all(small, split)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # Line numbers stay right across parse blocks.
  bad = tmp / "bad"
  shutil.copytree(top, bad / top.name)
  log = bad / top.name / "data" / "log_random_4_22_to_5_08_pure.csv"
  lines = log.read_text().splitlines(keepends=True)
  lines[150] = "x" + lines[150]
  log.write_text("".join(lines))
  with pytest.raises(RawDataError,
                     match=r"log_random_4_22_to_5_08_pure.csv, line 151, column "
                           r"'user_id': not a number: 'x\d+'"):
    prepared.load(data_config(tmp / "tfds_bad", extracted_dir=str(bad / top.name)))


def test_archive_and_27k_part_files(tmp_path):
  top = fake_raw.write_kuairand(tmp_path / "raw", num_rows=400, num_users=20,
                                num_videos=40, size="27k", seed=2)
  # 27K splits its big logs into parts; split one log in two
  log = top / "data" / "log_standard_4_08_to_4_21_27k.csv"
  lines = log.read_text().splitlines(keepends=True)
  (top / "data" / "log_standard_4_08_to_4_21_27k_part1.csv").write_text(
      "".join(lines[:50]))
  (top / "data" / "log_standard_4_08_to_4_21_27k_part2.csv").write_text(
      lines[0] + "".join(lines[50:]))
  log.unlink()
  archive = fake_raw.pack_tar_gz(top, tmp_path / "KuaiRand-27K-test.tar.gz")
  md5 = "md5:" + sources.file_checksum(archive, "md5")
  ds = prepared.load(data_config(tmp_path / "tfds", size="27k", archive=str(archive),
                                 archive_checksum=md5))
  assert ds.schema.source["checksum"] == md5
  assert len(ds.schema.source["files"]["logs"]) == 4
  tabs = ds.schema.source["tabs"]
  all_rows = sum(1 for _ in lines[1:]) + sum(
      1 for n in ("log_standard_4_22_to_5_08_27k.csv", "log_random_4_22_to_5_08_27k.csv")
      for l in (top / "data" / n).read_text().splitlines()[1:])
  assert sum(len(ds.splits[s]) for s in pipeline.SPLITS) < all_rows
  kept = 0
  for p in sorted((top / "data").glob("log_*.csv")):
    with open(p, newline="") as f:
      kept += sum(1 for r in csv.DictReader(f) if int(r["tab"]) in tabs)
  assert sum(len(ds.splits[s]) for s in pipeline.SPLITS) == kept


def test_default_builder_configs_match_the_issue():
  names = [c.name for c in kuairand.M3oeKuairand.BUILDER_CONFIGS]
  assert names == ["pure", "1k", "27k"]
  assert kuairand.make_config().name == "pure"
  assert kuairand.make_config(tabs=[1, 0, 4]).name.startswith("pure_")
  with pytest.raises(ValueError, match="not log columns"):
    kuairand.make_config(tasks=["is_clik"])
  with pytest.raises(ValueError, match="unknown sparse features"):
    kuairand.make_config(sparse_features=["user_idd"])


PAPER_FEATURES = (
    ["user_active_degree", "is_live_streamer", "is_video_author", "follow_user_num_range",
     "fans_user_num_range", "friend_user_num_range", "register_days_range"]
    + [f"onehot_feat{i}" for i in range(18)]
    + ["video_type", "upload_dt", "upload_type", "server_width", "server_height",
       "music_type", "tag", "counts"])


def test_default_config_is_the_authors_features_and_tabs():
  from configs import kuairand as kuairand_config  # pylint: disable=g-import-not-at-top
  c = kuairand_config.get_config()
  assert list(c.data.sparse_features) == PAPER_FEATURES + ["domain"]
  assert len(c.data.sparse_features) == 34
  assert list(c.data.tabs) == [0, 1, 4]
  assert list(c.data.dense_features) == []
  assert not {"user_id", "video_id"} & set(c.data.sparse_features)
  assert list(c.data.tasks) == ["is_click", "long_view"]
  assert list(c.data.logs) == list(kuairand.LOGS)
  rich = kuairand_config.get_config("rich")
  assert {"user_id", "video_id", "first_tag", "duration_bucket", "hour"} <= set(
      rich.data.sparse_features)
  assert len(rich.data.dense_features) == 4 and list(rich.data.tabs) == [0, 1, 4]
  tiny_rich = kuairand_config.get_config("tiny_offline,rich")
  assert list(tiny_rich.data.sparse_features) == list(rich.data.sparse_features)
  assert tiny_rich.data.archive
  with pytest.raises(ValueError, match="pick one of"):
    kuairand_config.get_config("1k,27k")


def test_tiny_archive_with_the_paper_features(tmp_path):
  import tarfile  # pylint: disable=g-import-not-at-top
  from configs import kuairand as kuairand_config  # pylint: disable=g-import-not-at-top
  c = kuairand_config.get_config("tiny_offline")
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.placement = "host"
  ds = prepared.load(c.data)
  assert ds.schema.sparse_names == tuple(PAPER_FEATURES) + ("domain",)
  assert ds.schema.num_sparse == 34 and ds.schema.num_dense == 0
  assert ds.schema.domain_names == ("tab0", "tab1", "tab4")
  assert ds.schema.source["files"]["video_statistics"] == [
      "KuaiRand-Pure/data/video_features_statistic_pure.csv"]

  with tarfile.open(c.data.archive) as t:
    t.extractall(tmp_path / "raw", filter="data")
  top = tmp_path / "raw" / "KuaiRand-Pure"
  kept, part = expected(read_logs(top), [0, 1, 4])

  def by_id(name, key):
    with open(top / "data" / name, newline="") as f:
      return {int(r[key]): r for r in csv.DictReader(f)}
  videos = by_id("video_features_basic_pure.csv", "video_id")
  stats = by_id("video_features_statistic_pure.csv", "video_id")
  users = by_id("user_features_pure.csv", "user_id")
  assert any("," in v["tag"] for v in videos.values())  # the whole list is one value
  raw = {
      "tag": lambda r: videos[int(r["video_id"])]["tag"],
      "upload_dt": lambda r: videos[int(r["video_id"])]["upload_dt"],
      "server_width": lambda r: int(videos[int(r["video_id"])]["server_width"]),
      "server_height": lambda r: int(videos[int(r["video_id"])]["server_height"]),
      "counts": lambda r: int(stats[int(r["video_id"])]["counts"]),
      "fans_user_num_range": lambda r: users[int(r["user_id"])]["fans_user_num_range"],
      "domain": lambda r: [0, 1, 4].index(int(r["tab"])),
  }
  path = pathlib.Path(os.fspath(prepared.make_builder(c.data).data_path))
  vocabs = {f: np.load(path / storage.VOCAB_DIR / f"{f}.npy").tolist() for f in raw}
  train_rows = [r for i, r in enumerate(kept) if part[i] == 0]
  for f, get in raw.items():
    assert sorted(vocabs[f]) == sorted({get(r) for r in train_rows}), f
  for k, split in enumerate(pipeline.SPLITS):
    rows = [r for i, r in enumerate(kept) if part[i] == k]
    got = _all(ds, split)["sparse"]
    for f, get in raw.items():
      j = ds.schema.sparse_names.index(f)
      want = [vocabs[f].index(get(r)) + 1 if get(r) in vocabs[f] else 0 for r in rows]
      np.testing.assert_array_equal(got[:, j], want, err_msg=f"{split} {f}")


def test_statistics_file_is_read_only_for_counts(tmp_path):
  top = fake_raw.write_kuairand(tmp_path / "raw", num_rows=300, num_users=20,
                                num_videos=30, seed=4)
  (top / "data" / "video_features_statistic_pure.csv").unlink()
  ds = prepared.load(data_config(tmp_path / "tfds", extracted_dir=str(top),
                                 sparse_features=["video_id", "tag", "domain"]))
  assert "video_statistics" not in ds.schema.source["files"]
  with pytest.raises(RawDataError,
                     match=r"video_features_statistic_pure\*\.csv.*video statistics"):
    prepared.load(data_config(tmp_path / "tfds", extracted_dir=str(top),
                              sparse_features=["counts", "domain"]))
