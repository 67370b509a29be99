"""reproduce/ml100k.py on a tiny fake RecBole ml-100k: the zip is MovieLens-1M's layout and
prepares through configs/movielens.py, the csv holds the same rows in the same order, ratings
are in temporal order, ages become MovieLens-1M's codes; bad input is one line."""

import csv
import hashlib
import json
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from m3oe_jax.cli import load_config_file
from m3oe_jax.data import pipeline
from m3oe_jax.data import prepared as prepared_data
from reproduce import ml100k

REPO = pathlib.Path(__file__).resolve().parents[1]

USER = ("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t17\tF\twriter\t05201\n"
        "2\t30\tM\tartist\tT8H1N\n"
        "3\t61\tM\tadministrator\t94043\n")
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "2\tMisérables, Les\t1995\tDrama Musical\n"
        "3\tunknown\tunknown\tunknown\n")
# (user, item, rating, timestamp), out of time order, with ties on the timestamp.
RATINGS = [(3, 1, 5, 900), (1, 2, 4, 500), (2, 3, 1, 700), (1, 1, 5, 700), (2, 1, 3, 500),
           (3, 2, 2, 600), (1, 3, 4, 800), (2, 2, 5, 1000), (3, 3, 3, 1100), (1, 1, 2, 1200)]
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
    f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS)
TEMPORAL = sorted(RATINGS, key=lambda r: (r[3], r[0], r[1]))
AGE_CODE = {1: 1, 2: 25, 3: 56}
OCCUPATION = {1: 2, 2: 1, 3: 0}  # sorted names: administrator, artist, writer


def fake_wheel(path, inter=INTER, user=USER, item=ITEM, leave_out=None):
  with zipfile.ZipFile(path, "w") as wheel:
    for kind, text in (("inter", inter), ("user", user), ("item", item)):
      if kind != leave_out:
        wheel.writestr(ml100k.MEMBER.format(kind), text.encode("utf-8"))
    wheel.writestr("recbole/__init__.py", "")
  return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("ml100k")
  wheel = fake_wheel(tmp / "recbole-1.2.1-py3-none-any.whl")
  assert ml100k.main([f"--wheel={wheel}", f"--out={tmp / 'out'}"]) == 0
  return tmp / "out", wheel


def _dat(archive, name):
  with zipfile.ZipFile(archive) as z:
    return z.read(f"ml-1m/{name}").decode("latin-1").splitlines()


def test_zip_is_ml_1m_layout_in_temporal_order(converted):
  out, _ = converted
  archive = out / ml100k.ZIP_NAME
  with zipfile.ZipFile(archive) as z:
    assert z.namelist() == ["ml-1m/", "ml-1m/ratings.dat", "ml-1m/users.dat",
                            "ml-1m/movies.dat", "ml-1m/README"]
  assert _dat(archive, "ratings.dat") == [f"{u}::{i}::{r}::{t}" for u, i, r, t in TEMPORAL]
  assert _dat(archive, "users.dat") == ["1::F::1::2::05201", "2::M::25::1::T8H1N",
                                        "3::M::56::0::94043"]
  assert _dat(archive, "movies.dat") == ["1::Toy Story (1995)::Animation|Children's|Comedy",
                                         "2::Misérables, Les (1995)::Drama|Musical",
                                         "3::unknown::unknown"]
  description = json.loads((out / ml100k.JSON_NAME).read_text())
  assert description["ratings"] == len(RATINGS) and description["users"] == 3
  assert description["files"][ml100k.ZIP_NAME] == (
      "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest())
  assert description["source"]["is_recbole_1_2_1"] is False


def test_csv_has_the_same_rows_in_the_same_order(converted):
  out, _ = converted
  with open(out / ml100k.CSV_NAME, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  assert tuple(rows[0]) == ml100k.CSV_HEADER
  ratings = [line.split("::") for line in _dat(out / ml100k.ZIP_NAME, "ratings.dat")]
  assert [r[:4] for r in rows[1:]] == ratings
  titles = {1: "Toy Story (1995)", 2: "Misérables, Les (1995)", 3: "unknown"}
  zips = {1: "05201", 2: "T8H1N", 3: "94043"}
  for row in rows[1:]:
    user, item = int(row[0]), int(row[1])
    assert row[4] == titles[item]
    assert row[6:] == [{1: "F"}.get(user, "M"), str(AGE_CODE[user]), str(OCCUPATION[user]),
                       zips[user]]


def test_same_bytes_every_run(converted, tmp_path):
  out, wheel = converted
  assert ml100k.main([f"--wheel={wheel}", f"--out={tmp_path}"]) == 0
  for name in (ml100k.ZIP_NAME, ml100k.CSV_NAME, ml100k.JSON_NAME):
    assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_age_codes():
  cases = {1: 1, 17: 1, 18: 18, 24: 18, 25: 25, 34: 25, 35: 35, 44: 35, 45: 45, 49: 45,
           50: 50, 55: 50, 56: 56, 73: 56}
  assert {a: ml100k.age_code(a) for a in cases} == cases


def test_zip_prepares_through_the_movielens_config(converted, tmp_path):
  """configs/movielens.py:reference_split with the archive and its checksum: the file-order
  80/10/10 split is the temporal one, the domains are the age groups."""
  out, _ = converted
  archive = out / ml100k.ZIP_NAME
  checksum = json.loads((out / ml100k.JSON_NAME).read_text())["files"][ml100k.ZIP_NAME]
  for variant in ("reference_split", "default"):
    config = load_config_file("configs/movielens.py", variant).data
    config.archive, config.archive_checksum = str(archive), checksum
    config.data_dir, config.download, config.placement = str(tmp_path / variant), False, "host"
    ds = prepared_data.load(config)
    assert ds.schema.source["kind"] == "archive"
    assert [len(ds.splits[k]) for k in pipeline.SPLITS] == [8, 1, 1]
    start = 0
    domain_of_user = {1: 0, 2: 1, 3: 2}
    for split in pipeline.SPLITS:
      n = len(ds.splits[split])
      got = ds.splits[split].take(np.arange(n))
      want = TEMPORAL[start:start + n]
      start += n
      assert got["domain"].tolist() == [domain_of_user[u] for u, _, _, _ in want], split
      assert got["labels"].tolist() == [[float(r > 3), float(r > 4)] for _, _, r, _ in want]


def _run(*args):
  return subprocess.run([sys.executable, str(REPO / "reproduce" / "ml100k.py"), *args],
                        capture_output=True, text=True, timeout=120, cwd=REPO)


def test_bad_input_is_one_line(tmp_path):
  proc = _run(f"--wheel={tmp_path / 'nope.whl'}", f"--out={tmp_path / 'o'}")
  assert proc.returncode == 2
  assert proc.stderr.strip() == (f"reproduce/ml100k.py: error: --wheel={tmp_path / 'nope.whl'}: "
                                 "no such file or folder")
  wheel = fake_wheel(tmp_path / "a.whl", leave_out="item")
  proc = _run(f"--wheel={wheel}", f"--out={tmp_path / 'o'}")
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
  assert "recbole/dataset_example/ml-100k/ml-100k.item" in proc.stderr
  (tmp_path / "b.whl").write_text("not a zip")
  proc = _run(f"--wheel={tmp_path / 'b.whl'}", f"--out={tmp_path / 'o'}")
  assert proc.returncode == 2 and "not a readable wheel" in proc.stderr
  bad = fake_wheel(tmp_path / "c.whl", inter=INTER + "1\t2\t7\t1300\n")
  proc = _run(f"--wheel={bad}", f"--out={tmp_path / 'o'}")
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("reproduce/ml100k.py: error: ml-100k.inter, line 12, rating: "
                                 "7 is outside 1..5")
  bad = fake_wheel(tmp_path / "d.whl", inter=INTER + "9\t2\t3\t1300\n")
  proc = _run(f"--wheel={bad}", f"--out={tmp_path / 'o'}")
  assert "ml-100k.inter, line 12, user_id: user 9 is not in ml-100k.user" in proc.stderr
  assert not (tmp_path / "o").exists()


def test_a_folder_of_the_three_files(tmp_path):
  for kind, text in (("inter", INTER), ("user", USER), ("item", ITEM)):
    (tmp_path / f"ml-100k.{kind}").write_text(text, encoding="utf-8")
  assert ml100k.parse(ml100k.read_sources(tmp_path)).ratings == TEMPORAL
