"""Bad raw input: each case gives a clear error naming the file, line or column,
leaves nothing that looks like a prepared dataset, and a rerun after the fix works."""

import re
import shutil

import ml_collections
import pytest

from m3oe_jax.data import fake_raw, prepared
from m3oe_jax.data.raw import RawDataError, RawSourceNotFoundError, sources
from tests.data.helpers import (KR_LOG, KR_LOG0, KR_USERS, nothing_looks_complete, rewrite_csv,
                                set_field, write_raw)


def drop_column(path, column):
  def fn(rows):
    i = rows[0].index(column)
    return [r[:i] + r[i + 1:] for r in rows]
  rewrite_csv(path, fn)


# Each case: (id, dataset, mutate(top, tmp) -> config overrides, fix overrides or
# None, exception type, regexes the message must match).
def kr(name):
  return lambda top: top / "data" / name


def _tab1_click(top):
  set_field(top / "data" / KR_LOG0, 7, "tab", "1")
  set_field(top / "data" / KR_LOG0, 7, "is_click", "2")
  return {}


def _truncate(top):
  p = top / "data" / KR_LOG
  data = p.read_bytes().rstrip(b"\n")
  p.write_bytes(data[:-10])
  return {}


def _bad_utf8(top):
  p = top / "data" / KR_USERS
  lines = p.read_bytes().split(b"\n")
  lines[5] = lines[5].replace(b"_active", b"_act\xffive", 1).replace(b"UNKNOWN", b"UNK\xffN", 1)
  p.write_bytes(b"\n".join(lines))
  return {}


def _utf16(top, name):
  p = top / name
  p.write_bytes(p.read_text("latin-1").encode("utf-16"))
  return {}


def _archive(top, tmp, checksum_of=None, truncate=False):
  archive = fake_raw.pack_tar_gz(top, tmp / "KuaiRand-Pure-test.tar.gz")
  md5 = "md5:" + sources.file_checksum(archive, "md5")
  if truncate:
    data = archive.read_bytes()
    archive.write_bytes(data[:len(data) // 2])
    if checksum_of == "truncated":
      md5 = "md5:" + sources.file_checksum(archive, "md5")
  if checksum_of == "other":
    md5 = "md5:" + "0" * 32
  return {"archive": str(archive), "archive_checksum": md5, "extracted_dir": ""}


def _ml_ratings(top, line, text):
  p = top / "ratings.dat"
  lines = p.read_text("latin-1").splitlines()
  lines[line - 1] = text
  p.write_text("\n".join(lines) + "\n", "latin-1")
  return {}


def _ml_no_56(top):
  p = top / "users.dat"
  rows = [l.split("::") for l in p.read_text("latin-1").splitlines()]
  for r in rows:
    if r[2] == "56":
      r[2] = "50"
  p.write_text("\n".join("::".join(r) for r in rows) + "\n", "latin-1")
  return {"age_groups": [[1, 18], [25], [35, 45, 50], [56]]}


def _without_tab(top, tab, instead):
  """Moves every row of `tab` in every log to tab `instead`."""
  for name in (KR_LOG0, KR_LOG, "log_standard_4_22_to_5_08_pure.csv"):
    rewrite_csv(top / "data" / name, lambda rows: [rows[0]] + [
        r[:-1] + [str(instead) if r[-1] == str(tab) else r[-1]] for r in rows[1:]])
  return {"tabs": [1, tab]}


def _ml_users_field(top, line, index, value):
  p = top / "users.dat"
  rows = [l.split("::") for l in p.read_text("latin-1").splitlines()]
  rows[line - 1][index] = value
  p.write_text("\n".join("::".join(r) for r in rows) + "\n", "latin-1")
  return {}


def _ml_dup_user(top):
  p = top / "users.dat"
  lines = p.read_text("latin-1").splitlines()
  lines[3] = "1" + lines[3][lines[3].index("::"):]
  p.write_text("\n".join(lines) + "\n", "latin-1")
  return {}


CASES = [
    ("missing_archive", "kuairand",
     lambda top, tmp: {"archive": str(tmp / "nope" / "KuaiRand-Pure.tar.gz"),
                       "extracted_dir": ""}, {"archive": ""}, RawSourceNotFoundError,
     [r"nope/KuaiRand-Pure\.tar\.gz.* does not exist",
      r"https://zenodo\.org/records/10439422/files/KuaiRand-Pure\.tar\.gz"]),
    ("nothing_offline", "kuairand", lambda top, tmp: {"extracted_dir": ""}, {},
     RawSourceNotFoundError,
     [r"Download https://zenodo\.org/records/10439422/files/KuaiRand-Pure\.tar\.gz",
      r"md5:0820331067a3784d9691136f772b35a7", r"put KuaiRand-Pure\.tar\.gz in .*manual",
      r"download is False"]),
    ("missing_file", "kuairand", lambda top, tmp: (top / "data" / KR_USERS).unlink() or {},
     None, RawDataError, [r"user_features_pure\*?\.csv", "missing"]),
    ("missing_column", "kuairand", lambda top, tmp: drop_column(top / "data" / KR_LOG, "tab")
     or {}, None, RawDataError,
     [KR_LOG, r"missing column\(s\) \['tab'\]"]),
    ("renamed_column", "kuairand",
     lambda top, tmp: rewrite_csv(top / "data" / KR_LOG, lambda rows: [
         ["click" if c == "is_click" else c for c in rows[0]]] + rows[1:]) or {},
     None, RawDataError, [KR_LOG, r"missing column\(s\) \['is_click'\]"]),
    ("non_numeric_id", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_LOG, 5, "user_id", "u17") or {}, None,
     RawDataError, [KR_LOG + ", line 5, column 'user_id'", "not a number",
                    "'u17'"]),
    ("nan_dense", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_USERS, 3, "follow_user_num", "nan")
     or {}, None, RawDataError,
     [KR_USERS + ", line 3, column 'follow_user_num'", "NaN or infinite"]),
    ("inf_dense", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_USERS, 4, "fans_user_num", "inf")
     or {}, None, RawDataError,
     [KR_USERS + ", line 4, column 'fans_user_num'", "NaN or infinite"]),
    ("missing_dense", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_USERS, 6, "register_days", "") or {},
     None, RawDataError, [KR_USERS + ", line 6, column 'register_days'"]),
    ("label_outside", "kuairand", lambda top, tmp: _tab1_click(top), None,
     RawDataError, [KR_LOG0 + ", line 7, column 'is_click'",
                    r"label 2 is outside \{0, 1\}"]),
    ("tab_without_rows", "kuairand", lambda top, tmp: _without_tab(top, 14, 13),
     {"tabs": []}, RawDataError, [r"domain\(s\) \['tab14'\] have no rows"]),
    # Values outside their documented range, some of which would size an
    # allocation (a bincount over `tab`): refused where they are read, whether
    # the tabs are counted (tabs=[]) or fixed.
    ("huge_tab_counted", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_LOG, 9, "tab", "2000000000") or {},
     None, RawDataError,
     [KR_LOG + ", line 9, column 'tab': 2000000000 is outside 0..14"]),
    ("huge_tab_fixed_tabs", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_LOG, 9, "tab", "2000000000")
     or {"tabs": [0, 1, 4]}, {"tabs": []}, RawDataError,
     [KR_LOG + ", line 9, column 'tab': 2000000000 is outside 0..14"]),
    ("negative_tab", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_LOG0, 4, "tab", "-3") or {}, None,
     RawDataError, [KR_LOG0 + ", line 4, column 'tab': -3 is outside 0..14"]),
    ("tab_15", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_LOG0, 4, "tab", "15") or {}, None,
     RawDataError, [KR_LOG0 + ", line 4, column 'tab': 15 is outside 0..14"]),
    ("hourmin_minute_60", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_LOG, 6, "hourmin", "1260") or {}, None,
     RawDataError, [KR_LOG + ", line 6, column 'hourmin': 1260 is not an HHMM",
                    r"hour 0\.\.23, minute 0\.\.59"]),
    ("hourmin_hour_24", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_LOG, 8, "hourmin", "2400") or {}, None,
     RawDataError, [KR_LOG + ", line 8, column 'hourmin': 2400 is not an HHMM"]),
    ("hourmin_huge", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_LOG, 8, "hourmin", "9000000000000")
     or {}, None, RawDataError,
     [KR_LOG + ", line 8, column 'hourmin': 9000000000000 is not an HHMM"]),
    ("negative_time", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_LOG, 3, "time_ms", "-5") or {}, None,
     RawDataError, [KR_LOG + r", line 3, column 'time_ms': -5 is outside 0\.\."]),
    ("huge_categorical", "kuairand",
     lambda top, tmp: set_field(top / "data" / KR_USERS, 5, "onehot_feat3", "1e30") or {},
     None, RawDataError,
     [KR_USERS + ", line 5, column 'onehot_feat3'", r"too large.*2\*\*53"]),
    ("ml_occupation_outside", "movielens", lambda top, tmp: _ml_users_field(top, 5, 3, "99"),
     None, RawDataError,
     [r"users\.dat, line 5, column 'Occupation': 99 is outside 0\.\.20"]),
    ("ml_negative_timestamp", "movielens",
     lambda top, tmp: _ml_ratings(top, 6, "1::1::4::-978300760"), None,
     RawDataError,
     [r"ratings\.dat, line 6, column 'Timestamp': -978300760 is outside 0\.\."]),
    ("empty_split", "kuairand", lambda top, tmp: {"split_ratios": [1e4, 1.0, 1.0]},
     {"split_ratios": [8.0, 1.0, 1.0]}, RawDataError,
     [r"split \['validation'\] would be empty"]),
    ("truncated_file", "kuairand", lambda top, tmp: _truncate(top), None,
     RawDataError, [KR_LOG + r", line \d+", "wrong number of fields"]),
    ("utf16_encoding", "kuairand", lambda top, tmp: _utf16(top, "data/" + KR_USERS), None,
     RawDataError, [KR_USERS, "unreadable encoding"]),
    ("invalid_utf8", "kuairand", lambda top, tmp: _bad_utf8(top), None,
     RawDataError, [KR_USERS + ", line 6", "unreadable encoding"]),
    ("checksum_mismatch", "kuairand", lambda top, tmp: _archive(top, tmp, "other"), "archive",
     RawDataError, ["KuaiRand-Pure-test.tar.gz", "checksum mismatch"]),
    ("truncated_archive", "kuairand", lambda top, tmp: _archive(top, tmp, None, True),
     "archive", RawDataError, ["checksum mismatch", "truncated"]),
    ("truncated_archive_checksum_of_truncated", "kuairand",
     lambda top, tmp: _archive(top, tmp, "truncated", True), "archive",
     RawDataError, ["KuaiRand-Pure-test.tar.gz", "truncated or corrupt"]),
    ("ml_rating_outside", "movielens", lambda top, tmp: _ml_ratings(top, 3, "1::1::7::978300760"),
     None, RawDataError, [r"ratings\.dat, line 3, column 'Rating'",
                          r"rating 7 is outside 1\.\.5"]),
    ("ml_non_numeric_id", "movielens",
     lambda top, tmp: _ml_ratings(top, 4, "1::abc::4::978300760"), None,
     RawDataError, [r"ratings\.dat, line 4, column 'MovieID'", "'abc'"]),
    ("ml_missing_field", "movielens", lambda top, tmp: _ml_ratings(top, 2, "1::2::4"), None,
     RawDataError, [r"ratings\.dat, line 2", "wrong number of fields"]),
    ("ml_age_group_without_rows", "movielens", lambda top, tmp: _ml_no_56(top),
     {"age_groups": [[1, 18], [25], [35, 45, 50, 56]]}, RawDataError,
     [r"domain\(s\) \['age_56'\] have no rows"]),
    ("ml_utf16", "movielens", lambda top, tmp: _utf16(top, "users.dat"), None,
     RawDataError, [r"users\.dat", "unreadable encoding"]),
    ("ml_missing_file", "movielens", lambda top, tmp: (top / "movies.dat").unlink() or {},
     None, RawDataError, [r"movies\.dat", "missing"]),
    ("ml_duplicate_user", "movielens", lambda top, tmp: _ml_dup_user(top), None,
     RawDataError, [r"users\.dat, line 4, column 'UserID': duplicate user 1"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, tmp_path):
  _, dataset, mutate, fix, exc, patterns = case
  top = write_raw(dataset, tmp_path / "raw")
  overrides = {"extracted_dir": str(top)}
  overrides.update(mutate(top, tmp_path) or {})
  data_dir = tmp_path / "tfds"
  cfg = ml_collections.ConfigDict(dict(name=dataset, data_dir=str(data_dir),
                                       download=False, manual_dir=str(tmp_path / "manual"),
                                       placement="host"))
  for k, v in overrides.items():
    cfg[k] = v
  with pytest.raises(exc) as info:
    prepared.load(cfg)
  message = str(info.value)
  for pattern in patterns:
    assert re.search(pattern, message), f"{pattern!r} not in: {message}"
  assert nothing_looks_complete(data_dir)

  # Fix the input (fresh raw files, or the config) and prepare again.
  shutil.rmtree(tmp_path / "raw")
  top = write_raw(dataset, tmp_path / "raw")
  if fix == "archive":
    cfg.update(_archive(top, tmp_path))
  else:
    cfg.extracted_dir = str(top)
    for k, v in (fix or {}).items():
      cfg[k] = v
  ds = prepared.load(cfg)
  assert sum(len(s) for s in ds.splits.values()) > 0
  assert not nothing_looks_complete(data_dir)
