"""Input that used to change the prepared data without a word: each case is
either refused with a message naming the file (or the config field) and what to
do, or counted and reported in the printed summary and the schema's `source`.
Expected counts are computed independently with the `csv` module."""

import csv
import io
import pathlib
import re
import shutil
import tarfile
import tracemalloc
import warnings
import zipfile

import ml_collections
import pytest

from m3oe_jax.data import fake_raw, prepared
from m3oe_jax.data.raw import RawDataError, sources, storage
from m3oe_jax.data.raw import prepare as raw_prepare
from m3oe_jax.errors import ConfigError
from tests.data.helpers import (KR_LOG, KR_LOG0, KR_USERS, nothing_looks_complete, set_field,
                                write_raw)

KR_LOGS = (KR_LOG0, "log_standard_4_22_to_5_08_pure.csv", KR_LOG)
KR_VIDEOS = "video_features_basic_pure.csv"


def data_config(dataset, tmp_path, top, **kw):
  c = ml_collections.ConfigDict(dict(name=dataset, data_dir=str(tmp_path / "tfds"),
                                     download=False, manual_dir=str(tmp_path / "manual"),
                                     placement="host",
                                     extracted_dir=str(top) if top else ""))
  for k, v in kw.items():
    c[k] = v
  return c


def read_rows(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def write_rows(path, rows):
  buf = io.StringIO()
  csv.writer(buf, lineterminator="\n").writerows(rows)
  path.write_text(buf.getvalue())


def refused(cfg, *patterns):
  with pytest.raises(RawDataError) as info:
    prepared.load(cfg)
  for p in patterns:
    assert re.search(p, str(info.value)), f"{p!r} not in: {info.value}"
  assert nothing_looks_complete(pathlib.Path(cfg.data_dir))
  return str(info.value)


# ---------------------------------------------------------------------------
# A single value cannot make memory scale with its magnitude.


@pytest.mark.parametrize("tabs", [[], [0, 1, 4]], ids=["counted_tabs", "fixed_tabs"])
def test_huge_tab_is_refused_in_bounded_memory(tmp_path, tabs):
  top = write_raw("kuairand", tmp_path / "raw")
  set_field(top / "data" / KR_LOG, 9, "tab", "2000000000")
  tracemalloc.start()
  try:
    refused(data_config("kuairand", tmp_path, top, tabs=tabs),
            KR_LOG + ", line 9, column 'tab': 2000000000 is outside 0..14")
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert peak < 256 << 20, f"peak {peak / 2**20:.0f} MiB"


# ---------------------------------------------------------------------------
# A second copy of a log file is refused: which copy is meant cannot be known,
# and reading both would count its rows twice.


def _copy_named(top, name):
  shutil.copy(top / "data" / KR_LOG, top / "data" / name)


def _copy_nested(top, _):
  (top / "old").mkdir()
  shutil.copy(top / "data" / KR_LOG, top / "old" / KR_LOG)


COPIES = [
    ("download_copy", lambda top: _copy_named(top, "log_random_4_22_to_5_08_pure (1).csv"),
     [r"log_random_4_22_to_5_08_pure \(1\)\.csv", "read twice", "Remove or rename"]),
    ("renamed_copy", lambda top: _copy_named(top, "log_random_4_22_to_5_08_pure_old.csv"),
     [r"log_random_4_22_to_5_08_pure_old\.csv", "read twice"]),
    ("second_folder", lambda top: _copy_nested(top, None),
     [r"several folders", r"old/" + KR_LOG, r"data/" + KR_LOG]),
    ("whole_and_part", lambda top: _copy_named(top, "log_random_4_22_to_5_08_pure_part1.csv"),
     [r"both data/" + KR_LOG, r"_part1\.csv", "whole file or the parts"]),
    ("video_copy", lambda top: shutil.copy(top / "data" / KR_VIDEOS,
                                           top / "data" / "video_features_basic_pure (1).csv"),
     [r"video_features_basic_pure \(1\)\.csv", "basic video features"]),
]


@pytest.mark.parametrize("case", COPIES, ids=[c[0] for c in COPIES])
def test_copy_of_a_file_is_refused(tmp_path, case):
  _, mutate, patterns = case
  top = write_raw("kuairand", tmp_path / "raw")
  mutate(top)
  refused(data_config("kuairand", tmp_path, top), *patterns)


def test_parts_are_read_in_part_order(tmp_path):
  for n in (10, 2, 1):
    (tmp_path / f"log_x_27k_part{n}.csv").write_text("a\n")
  (tmp_path / "other.csv").write_text("a\n")
  source = sources.RawSource("extracted", str(tmp_path), None)
  assert source.find_parts("log_x_27k", "log 'x'") == [
      "log_x_27k_part1.csv", "log_x_27k_part2.csv", "log_x_27k_part10.csv"]
  assert source.find_parts("log_y_27k", "log 'y'") == []


def _tar_with_member_twice(top, archive, twice):
  with tarfile.open(archive, "w:gz") as tar:
    for path in sorted(p for p in top.rglob("*") if p.is_file()):
      tar.add(path, arcname=str(top.name / path.relative_to(top)))
    tar.add(top / twice, arcname=f"{top.name}/{twice}")
  return archive


def test_archive_member_twice_is_refused(tmp_path):
  top = write_raw("kuairand", tmp_path / "raw")
  archive = _tar_with_member_twice(top, tmp_path / "KuaiRand-Pure.tar.gz", "data/" + KR_LOG)
  cfg = data_config("kuairand", tmp_path, None, archive=str(archive),
                    archive_checksum="md5:" + sources.file_checksum(archive, "md5"))
  refused(cfg, "KuaiRand-Pure.tar.gz", r"several members named \['KuaiRand-Pure/data/"
          + KR_LOG, "read more than once")


def test_zip_member_twice_is_refused(tmp_path):
  top = write_raw("movielens", tmp_path / "raw")
  archive = fake_raw.pack_zip(top, tmp_path / "ml-1m.zip")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
    with zipfile.ZipFile(archive, "a") as z:
      z.writestr("ml-1m/ratings.dat", (top / "ratings.dat").read_bytes())
  cfg = data_config("movielens", tmp_path, None, archive=str(archive),
                    archive_checksum="sha256:" + sources.file_checksum(archive, "sha256"))
  refused(cfg, "ml-1m.zip", r"several members named \['ml-1m/ratings\.dat'\]")


# ---------------------------------------------------------------------------
# Ids absent from a feature file: counted per file and reported; refused when
# more than half of the kept rows miss (files of different releases).


def _drop_ids(path, ids):
  rows = read_rows(path)
  write_rows(path, [rows[0]] + [r for r in rows[1:] if int(r[0]) not in ids])


def _expected_missing(top, tabs, column, ids):
  rows, hit, missing = 0, 0, set()
  for name in KR_LOGS:
    with open(top / "data" / name, newline="") as f:
      for r in csv.DictReader(f):
        if int(r["tab"]) in tabs:
          rows += 1
          if int(r[column]) in ids:
            hit += 1
            missing.add(int(r[column]))
  return {"id_column": column, "ids": len(missing), "rows": hit, "rows_checked": rows,
          "example_ids": sorted(missing)[:5]}


def test_missing_videos_and_users_are_counted(tmp_path, capsys):
  top = write_raw("kuairand", tmp_path / "raw")
  gone_videos, gone_users = {0, 3, 7, 11, 59}, {2, 5}
  _drop_ids(top / "data" / KR_VIDEOS, gone_videos)
  _drop_ids(top / "data" / KR_USERS, gone_users)
  ds = prepared.load(data_config("kuairand", tmp_path, top, dense_features=[]))
  source = ds.schema.source
  report = source["checks"]["missing_features"]
  tabs = source["tabs"]
  videos = report[f"{top}/data/{KR_VIDEOS}"]
  users = report[f"{top}/data/{KR_USERS}"]
  assert videos == _expected_missing(top, tabs, "video_id", gone_videos)
  assert users == _expected_missing(top, tabs, "user_id", gone_users)
  assert videos["rows"] > 0 and users["rows"] > 0
  assert sum(source["num_rows"].values()) == videos["rows_checked"]
  out = capsys.readouterr().out
  assert (f"rows whose video_id is absent from {KR_VIDEOS} (given missing features): "
          f"{videos['rows']} of {videos['rows_checked']} ({videos['ids']} distinct ids, "
          f"e.g. {videos['example_ids']})") in out
  assert (f"rows whose user_id is absent from {KR_USERS} (given missing features): "
          f"{users['rows']} of {users['rows_checked']}") in out


def test_missing_features_above_the_threshold_are_refused(tmp_path):
  top = write_raw("kuairand", tmp_path / "raw")
  _drop_ids(top / "data" / KR_VIDEOS, set(range(10, 60)))
  refused(data_config("kuairand", tmp_path, top), KR_VIDEOS,
          r"kept log rows have a video_id absent from this file", "same KuaiRand release")


def test_nothing_missing_is_reported_as_zero(tmp_path):
  top = write_raw("kuairand", tmp_path / "raw")
  ds = prepared.load(data_config("kuairand", tmp_path, top))
  checks = ds.schema.source["checks"]
  assert {m["rows"] for m in checks["missing_features"].values()} == {0}
  assert checks["duplicate_rows"]["total"] == 0


# ---------------------------------------------------------------------------
# A domain without training rows is refused: the model cannot learn it.


def test_kuairand_domain_without_training_rows(tmp_path):
  top = write_raw("kuairand", tmp_path / "raw")
  late = 1_700_000_000_000
  for name in KR_LOGS:
    rows = read_rows(top / "data" / name)
    t, tab = rows[0].index("time_ms"), rows[0].index("tab")
    for i, r in enumerate(rows[1:]):
      if r[tab] == "4":
        r[t] = str(late + i)
    write_rows(top / "data" / name, rows)
  cfg = data_config("kuairand", tmp_path, top, tabs=[0, 1, 4], split_ratios=[1, 1, 1])
  refused(cfg, r"domain\(s\) \['tab4'\] have no training rows", "cannot learn",
          "config.data.split")
  cfg.split = "random"
  assert prepared.load(cfg).schema.source["counts"]["train"]["tab4"]["rows"] > 0


def test_movielens_domain_without_training_rows(tmp_path):
  top = write_raw("movielens", tmp_path / "raw")
  old = {l.split("::")[0] for l in (top / "users.dat").read_text("latin-1").splitlines()
         if l.split("::")[2] == "56"}
  lines = (top / "ratings.dat").read_text("latin-1").splitlines()
  for i, l in enumerate(lines):
    f = l.split("::")
    if f[0] in old:
      f[3] = str(1_500_000_000 + i)
      lines[i] = "::".join(f)
  (top / "ratings.dat").write_text("\n".join(lines) + "\n", "latin-1")
  cfg = data_config("movielens", tmp_path, top, split_ratios=[1, 1, 1],
                    age_groups=[[1, 18], [25, 35], [45, 50], [56]])
  refused(cfg, r"domain\(s\) \['age_56'\] have no training rows")


# ---------------------------------------------------------------------------
# Exact duplicate rows are kept (the reference reads them too) but counted per
# file and reported.


def test_kuairand_duplicate_rows_are_counted(tmp_path, capsys):
  top = write_raw("kuairand", tmp_path / "raw")
  path = top / "data" / KR_LOG0
  lines = path.read_text().splitlines()
  extra = [lines[2], lines[5], lines[5], lines[9], lines[20]]
  path.write_text("\n".join(lines + extra) + "\n")
  ds = prepared.load(data_config("kuairand", tmp_path, top, tabs=[0, 1, 4]))
  dup = ds.schema.source["checks"]["duplicate_rows"]
  expected = {}
  for name in KR_LOGS:
    body = (top / "data" / name).read_text().splitlines()[1:]
    kept = [l for l in body if l.split(",")[-1] in ("0", "1", "4")]
    expected[f"{top}/data/{name}"] = len(kept) - len(set(kept))
  assert dup["per_file"] == expected
  assert dup["total"] == expected[str(path)] > 0
  kept_rows = sum(1 for name in KR_LOGS for l in
                  (top / "data" / name).read_text().splitlines()[1:]
                  if l.split(",")[-1] in ("0", "1", "4"))
  assert sum(ds.schema.source["num_rows"].values()) == kept_rows
  assert f"exact duplicate rows kept: {dup['total']} ({KR_LOG0}: {dup['total']}" in (
      capsys.readouterr().out)


def test_movielens_duplicate_rows_are_counted(tmp_path):
  top = write_raw("movielens", tmp_path / "raw")
  path = top / "ratings.dat"
  lines = path.read_text("latin-1").splitlines()
  path.write_text("\n".join(lines + [lines[0], lines[7], lines[0]]) + "\n", "latin-1")
  ds = prepared.load(data_config("movielens", tmp_path, top))
  assert ds.schema.source["checks"]["duplicate_rows"]["per_file"] == {str(path): 3}


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_duplicate_count_does_not_depend_on_bucketing(tmp_path, chunk):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  hashes = rng.integers(-2**63, 2**63 - 1, 40, dtype=np.int64)
  row_hash = np.concatenate([hashes, hashes[:5], hashes[:2], hashes[30:33]])
  origin = np.array([0] * 20 + [1] * 20 + [1] * 5 + [-1] * 2 + [0] * 3, np.int32)
  cols = {}
  for name, a in (("h", row_hash), ("o", origin)):
    a.tofile(tmp_path / f"{name}.bin")
    cols[name] = storage.FlatColumn(str(tmp_path / f"{name}.bin"), a.dtype, 1, len(a),
                                    two_d=False)
  counts = raw_prepare.count_duplicate_rows(cols["h"], cols["o"], str(tmp_path), 2, chunk)
  # hashes[:5] repeat rows of file 0 in file 1; rows with origin -1 are not
  # counted; hashes[30:33] are file 1's rows repeated under file 0.
  assert counts.tolist() == [3, 5]
  assert not list(tmp_path.glob("dup*.bin"))


# ---------------------------------------------------------------------------
# Bad preparation settings are refused naming the config field.

SETTINGS = [
    ("kuairand", "chunk_rows", 0), ("kuairand", "chunk_rows", -5),
    ("movielens", "chunk_rows", 0),
    ("kuairand", "split_ratios", [1, 1]), ("kuairand", "split_ratios", [8, -1, 1]),
    ("kuairand", "split_ratios", [8, 1, float("nan")]),
    ("movielens", "split_ratios", [0, 0, 0]),
    ("kuairand", "split_seed", -1), ("movielens", "split_seed", 1.5),
    ("kuairand", "num_auto_tabs", 0), ("kuairand", "num_auto_tabs", 16),
    ("kuairand", "num_auto_tabs", 2.5),
    ("kuairand", "tabs", [15]), ("kuairand", "tabs", [-1]), ("kuairand", "tabs", [1.5]),
    ("kuairand", "tabs", [1, 1]), ("kuairand", "tabs", [2000000000]),
    ("kuairand", "tasks", ["play_time_ms"]), ("kuairand", "tasks", ["is_click", "is_click"]),
    ("kuairand", "tasks", []),
    ("kuairand", "logs", ["random_4_22_to_5_08", "random_4_22_to_5_08"]),
    ("kuairand", "logs", []), ("kuairand", "size", "2k"),
    ("kuairand", "split", "by_time"), ("movielens", "vocabulary", "everything"),
    ("kuairand", "sparse_features", ["user_id", "user_id"]),
    ("movielens", "dense_features", ["height"]),
    ("kuairand", "archive_checksum", "md5:xyz"),
    ("movielens", "task_thresholds", [5, 4]), ("movielens", "task_thresholds", [0, 4]),
    ("movielens", "task_thresholds", [3.5, 4]),
    ("movielens", "age_groups", [[1, 18], [25], [99]]),
    ("movielens", "tasks", ["click", "click"]),
]


@pytest.mark.parametrize("case", SETTINGS, ids=[f"{d}-{f}-{v}" for d, f, v in SETTINGS])
def test_bad_setting_names_the_field(tmp_path, case):
  dataset, field, value = case
  cfg = data_config(dataset, tmp_path, None)
  cfg[field] = value
  with pytest.raises(ConfigError, match=rf"config\.data\.{field}\b"):
    prepared.make_builder(cfg)
  assert not (tmp_path / "tfds").exists() or nothing_looks_complete(tmp_path / "tfds")


def test_prepare_refuses_bad_chunk_rows(tmp_path):
  with pytest.raises(ConfigError, match=r"config\.data\.chunk_rows=0"):
    raw_prepare.prepare(iter(()), None, str(tmp_path), chunk_rows=0)
