"""Shared builders of the data tests: raw files to prepare, edits of them, and
the check that a failed preparation left nothing that looks complete."""

import csv
import io
import pathlib

import ml_collections

from m3oe_jax.data import fake_raw
from m3oe_jax.data.raw import storage

# KuaiRand-Pure's file names, as `fake_raw.write_kuairand` writes them.
KR_LOG = "log_random_4_22_to_5_08_pure.csv"
KR_LOG0 = "log_standard_4_08_to_4_21_pure.csv"
KR_USERS = "user_features_pure.csv"


def write_raw(dataset, folder):
  """Small fake raw files of `dataset` ("kuairand" or "movielens") in `folder`."""
  if dataset == "kuairand":
    return fake_raw.write_kuairand(folder, num_rows=300, num_users=30, num_videos=60, seed=11)
  return fake_raw.write_movielens(folder, num_ratings=300, num_users=40, num_movies=50, seed=11)


def rewrite_csv(path, fn):
  """Rewrites a CSV file as `fn(rows)` (the header is rows[0])."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  rows = fn(rows)
  buf = io.StringIO()
  csv.writer(buf, lineterminator="\n").writerows(rows)
  path.write_text(buf.getvalue())


def set_field(path, line, column, value):
  """Sets `column` of file line `line` (1-based, the header is line 1)."""
  def fn(rows):
    rows[line - 1][rows[0].index(column)] = value
    return rows
  rewrite_csv(path, fn)


def nothing_looks_complete(data_dir: pathlib.Path):
  """Whether `data_dir` holds nothing of a preparation: no prepared folder, no
  TFDS `incomplete.*` folder, no spill folder."""
  if not data_dir.exists():
    return True
  names = [p.name for p in data_dir.rglob("*")]
  return ("dataset_info.json" not in names and storage.PREPARED_SCHEMA_FILE not in names
          and not any(n.startswith("incomplete") for n in names)
          and not any(n.startswith("m3oe-raw-") for n in names))


# Hand-written MovieLens-1M files: 4 users (ages 1, 25, 35, 56), 4 movies, 20
# ratings with distinct timestamps, listed out of time order. Latin-1 titles and
# zip codes as in the real files.
ML_USERS = ["1::F::1::10::48067", "2::M::25::16::70072", "3::M::35::15::55117",
            "4::F::56::7::02460-1234"]
ML_MOVIES = ["1::Toy Story (1995)::Animation|Children's|Comedy",
             "2::Jumanji (1995)::Adventure|Children's|Fantasy",
             "3::Amélie (2001)::Comedy|Romance", "4::Café au lait (1993)::Comedy"]
# (user, movie, rating, timestamp)
ML_RATINGS = [
    (1, 1, 5, 1000), (1, 2, 3, 1010), (2, 1, 4, 1020), (2, 3, 2, 1030), (3, 1, 1, 1040),
    (3, 2, 5, 1050), (4, 1, 4, 1060), (4, 3, 3, 1070), (1, 3, 4, 1080), (2, 2, 5, 1090),
    (3, 3, 4, 1100), (4, 2, 2, 1110), (1, 4, 5, 1120), (2, 4, 1, 1130), (3, 4, 3, 1140),
    (4, 4, 4, 1150), (2, 3, 5, 1160), (1, 1, 4, 1170),
    # the two latest: movie 4 by user 4 again, and user 3 on movie 1
    (4, 4, 5, 1190), (3, 1, 3, 1180)]
ML_ORDER = [5, 17, 2, 11, 0, 8, 14, 3, 19, 1, 9, 13, 6, 10, 18, 4, 12, 15, 7, 16]


def write_movielens_files(folder, ratings=None, users=None, movies=None):
  """`folder/ml-1m/` with the hand-written files (or the rows given instead)."""
  top = pathlib.Path(folder) / "ml-1m"
  top.mkdir(parents=True, exist_ok=True)
  ratings = ratings if ratings is not None else [
      "::".join(map(str, ML_RATINGS[i])) for i in ML_ORDER]
  for name, rows in (("ratings.dat", ratings), ("users.dat", users or ML_USERS),
                     ("movies.dat", movies or ML_MOVIES)):
    (top / name).write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
  return top


def raw_data_config(name, data_dir, **kw):
  """A `config.data` of the raw dataset `name` preparing into `data_dir` offline,
  with `kw` set."""
  c = ml_collections.ConfigDict(dict(name=name, data_dir=str(data_dir), download=False,
                                     placement="host"))
  for k, v in kw.items():
    c[k] = v
  return c


def movielens_config(data_dir, **kw):
  return raw_data_config("movielens", data_dir, **kw)
