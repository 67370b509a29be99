"""MovieLens-1M as a TFDS builder that needs no TensorFlow.

Reads `ml-1m.zip` from https://files.grouplens.org/datasets/movielens/ (the same
archive as the TFDS catalog's `movielens` builder, which parses through
TensorFlow): `ratings.dat` joined with `users.dat` and `movies.dat`, all
`::`-separated latin-1 text without a header. Domains are groups of the age
code (paper: {1, 18}, {25}, {35, 45, 50, 56}); tasks are thresholds on the
rating (paper: click = rating > 3, like = rating > 4).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa

from m3oe_jax.data.raw import RawDataError, builder, encode, prepare, settings, sources, text
from m3oe_jax.errors import ConfigError

ARCHIVE = sources.ArchiveSpec(
    url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    filename="ml-1m.zip",
    checksum="sha256:a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    top_dir="ml-1m",
    size=5_917_549)

PAPER_ARCHIVE = ARCHIVE  # the data of the paper's Table 2

AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
MAX_OCCUPATION = 20  # occupations are coded 0..20 (the archive's README)


def _fmt(names):
  return text.TextFormat(delimiter="\x1f", header=False, column_names=tuple(names),
                         encoding="latin-1", quote=False, multi_char_delimiter=b"::")


RATINGS = _fmt(("UserID", "MovieID", "Rating", "Timestamp"))
USERS = _fmt(("UserID", "Gender", "Age", "Occupation", "Zip-code"))
MOVIES = _fmt(("MovieID", "Title", "Genres"))

# Sparse features: name -> (table, column, kind).
SPARSE_FEATURES = {
    "user_id": ("ratings", "UserID", "int"),
    "movie_id": ("ratings", "MovieID", "int"),
    "gender": ("users", "Gender", "str"),
    "age": ("users", "Age", "int"),
    "occupation": ("users", "Occupation", "int"),
    "zip": ("users", "Zip-code", "str"),
    "genre": ("movies", "Genres", "first_genre"),
    "domain": ("users", "Age", "domain"),
}
DENSE_FEATURES = ("age",)  # the age code, min-max scaled on the training split

DEFAULT_SETTINGS = {
    "size": "1m",
    "age_groups": [[1, 18], [25], [35, 45, 50, 56]],
    "tasks": ["click", "like"],
    "task_thresholds": [3, 4],  # label = rating > threshold
    "sparse_features": ["user_id", "movie_id", "gender", "occupation", "zip", "genre",
                        "domain"],
    "dense_features": ["age"],
    "split": "temporal",
    "split_ratios": [8.0, 1.0, 1.0],
    "split_seed": 0,
    # "train": vocabularies from the training rows (unseen values -> id 0);
    # "all_rows": every value of every split gets an id (the reference code).
    "vocabulary": "train",
    "checksum": "",
}


def make_config(**overrides) -> builder.RawBuilderConfig:
  s = settings.with_defaults("movielens", DEFAULT_SETTINGS, overrides)
  if not isinstance(s["age_groups"], list) or not all(
      isinstance(g, (list, tuple)) for g in s["age_groups"]):
    raise ConfigError(f"movielens: config.data.age_groups={s['age_groups']!r} must be "
                      "a list of lists of age codes, e.g. [[1, 18], [25], [35, 45, 50, 56]]")
  s["age_groups"] = [settings.config_int_list(g, "age_groups", 1, 56, "MovieLens age codes")
                     for g in s["age_groups"]]
  if not isinstance(s["task_thresholds"], list):
    raise ConfigError(f"movielens: config.data.task_thresholds="
                      f"{s['task_thresholds']!r} must be a list of integers")
  s["task_thresholds"] = [
      settings.config_int(t, "task_thresholds", 1, 4,
                          "label = rating > threshold; ratings are 1..5, so any other "
                          "threshold gives a label that is always 0 or always 1")
      for t in s["task_thresholds"]]
  s["split_ratios"] = settings.config_ratios(s["split_ratios"])
  _validate(s)
  name = "1m" if s == DEFAULT_SETTINGS else f"1m_{settings.settings_hash(s)}"
  return builder.RawBuilderConfig(name=name, description="MovieLens-1M", settings=s)


def _validate(s: Mapping[str, Any]) -> None:
  if s["size"] != "1m":
    raise ConfigError(f"movielens: config.data.size: only '1m' is supported, got "
                      f"{s['size']!r}")
  ages = [a for g in s["age_groups"] for a in g]
  if not s["age_groups"] or any(not g for g in s["age_groups"]):
    raise ConfigError(f"movielens: config.data.age_groups {s['age_groups']} must be "
                      "non-empty lists")
  if len(set(ages)) != len(ages):
    raise ConfigError(f"movielens: an age code is in several of config.data.age_groups "
                      f"{s['age_groups']}")
  bad = [a for a in ages if a not in AGE_CODES]
  if bad:
    raise ConfigError(f"movielens: config.data.age_groups: age codes {bad} are not "
                      f"MovieLens codes {AGE_CODES}")
  if (not isinstance(s["tasks"], list) or len(s["tasks"]) != len(s["task_thresholds"])
      or not s["tasks"]):
    raise ConfigError(f"movielens: config.data.tasks {s['tasks']} and "
                      f"config.data.task_thresholds {s['task_thresholds']} must have "
                      "the same non-zero length")
  if len(set(s["tasks"])) != len(s["tasks"]) or not all(
      isinstance(t, str) and t for t in s["tasks"]):
    raise ConfigError(f"movielens: config.data.tasks {s['tasks']} must be distinct "
                      "non-empty names")
  settings.check_features_and_split("movielens", s, SPARSE_FEATURES, DENSE_FEATURES)


def domain_name(group) -> str:
  return "age_" + "_".join(str(a) for a in group)


class M3oeMovielens1m(builder.RawTableBuilder):
  """MovieLens-1M ratings: domains by age group, tasks by rating thresholds."""

  name = "m3oe_movielens1m"
  BUILDER_CONFIGS = [make_config()]
  HOMEPAGE = "https://grouplens.org/datasets/movielens/1m/"
  CITATION = """@article{harper2015movielens,
  title={The MovieLens Datasets: History and Context},
  author={Harper, F. Maxwell and Konstan, Joseph A.},
  journal={ACM TiiS}, volume={5}, number={4}, year={2015}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download ml-1m.zip from https://files.grouplens.org/datasets/movielens/ and put "
      "it in the manual dir, or point config.data.archive at it.")

  def archive_spec(self) -> sources.ArchiveSpec:
    return ARCHIVE

  def prepare_into(self, source: sources.RawSource, out_dir: str) -> dict[str, Any]:
    return prepare_movielens(self.settings, source, out_dir, scratch_dir=self._scratch_dir,
                             chunk_rows=self._chunk_rows)


BUILDER = M3oeMovielens1m


def prepare_movielens(s: Mapping[str, Any], source: sources.RawSource, out_dir: str, *,
                      scratch_dir: str | None = None,
                      chunk_rows: int = settings.DEFAULT_CHUNK_ROWS) -> dict[str, Any]:
  ratings_m = source.find_one("ratings.dat", "ratings")
  users_m = source.find_one("users.dat", "users")
  movies_m = source.find_one("movies.dat", "movies")
  sparse = list(s["sparse_features"])
  dense = list(s["dense_features"])
  coders = {f: encode.StringCoder() for f in sparse
            if SPARSE_FEATURES[f][2] in ("str", "first_genre")}

  # Users (6,040 rows) and movies (3,883 rows) are small: read them whole.
  where = source.display(users_m)
  u_ids, u_age, u_lines, u_codes = [], [], [], {f: [] for f in sparse}
  types = {"UserID": pa.int64(), "Gender": pa.string(), "Age": pa.int64(),
           "Occupation": pa.int64(), "Zip-code": pa.string()}
  for first, t in text.read_blocks(source, users_m, USERS, types):
    u_ids.append(text.column_int(t, "UserID", where, first))
    age = text.column_int(t, "Age", where, first)
    text.check_range(text.column_int(t, "Occupation", where, first), 0, MAX_OCCUPATION,
                     "Occupation", where, first, "MovieLens occupation codes")
    bad = np.flatnonzero(~np.isin(age, AGE_CODES))
    if len(bad):
      raise RawDataError(f"{where}, line {first + int(bad[0])}, column 'Age': "
                         f"{int(age[bad[0]])} is not an age code {AGE_CODES}")
    u_age.append(age)
    u_lines.append(np.arange(first, first + t.num_rows))
    for f in sparse:
      table, col, kind = SPARSE_FEATURES[f]
      if table != "users" or kind == "domain":
        continue
      u_codes[f].append(coders[f].encode(t.column(col)) if kind == "str"
                        else text.column_int(t, col, where, first))
  u_ids = np.concatenate(u_ids) if u_ids else np.zeros(0, np.int64)
  order = np.argsort(u_ids, kind="stable")
  u_sorted = u_ids[order]
  dup = np.flatnonzero(u_sorted[1:] == u_sorted[:-1])
  if len(dup):
    line = int(np.concatenate(u_lines)[order[dup[0] + 1]])
    raise RawDataError(f"{where}, line {line}, column 'UserID': duplicate user "
                       f"{int(u_sorted[dup[0]])}")
  u_age = np.concatenate(u_age)[order] if len(u_ids) else np.zeros(0, np.int64)
  u_codes = {f: np.concatenate(v)[order] for f, v in u_codes.items() if v}

  groups = s["age_groups"]
  age_to_domain = np.full(max(AGE_CODES) + 1, -1, np.int32)
  for d, g in enumerate(groups):
    age_to_domain[g] = d
  u_domain = age_to_domain[u_age]

  where_m = source.display(movies_m)
  m_ids, m_genre = [], []
  for first, t in text.read_blocks(source, movies_m, MOVIES,
                                   {"MovieID": pa.int64(), "Genres": pa.string()}):
    m_ids.append(text.column_int(t, "MovieID", where_m, first))
    if "genre" in coders:
      m_genre.append(coders["genre"].encode(t.column("Genres"),
                                            lambda g: g.split("|")[0]))
  m_ids = np.concatenate(m_ids) if m_ids else np.zeros(0, np.int64)
  m_order = np.argsort(m_ids, kind="stable")
  m_sorted = m_ids[m_order]
  m_genre = np.concatenate(m_genre)[m_order] if m_genre else None

  thresholds = np.array(s["task_thresholds"], np.int64)
  r_types = {"UserID": pa.int64(), "MovieID": pa.int64(), "Rating": pa.int64(),
             "Timestamp": pa.int64()}
  where_r = source.display(ratings_m)

  def chunks() -> Iterator[prepare.Chunk]:
    for first, t, hashes in text.read_blocks(source, ratings_m, RATINGS, r_types,
                                             line_hashes=True):
      user = text.column_int(t, "UserID", where_r, first)
      movie = text.column_int(t, "MovieID", where_r, first)
      rating = text.column_int(t, "Rating", where_r, first)
      ts = text.column_int(t, "Timestamp", where_r, first)
      text.check_range(ts, 0, text.MAX_TIME, "Timestamp", where_r, first, "unix seconds")
      bad = np.flatnonzero((rating < 1) | (rating > 5))
      if len(bad):
        raise RawDataError(
            f"{where_r}, line {first + int(bad[0])}, column 'Rating': rating "
            f"{int(rating[bad[0]])} is outside 1..5, so its labels would be outside {{0, 1}}")
      upos, ufound = encode.lookup_rows(u_sorted, user)
      if not ufound.all():
        bad = int(np.flatnonzero(~ufound)[0])
        raise RawDataError(f"{where_r}, line {first + bad}, column 'UserID': user "
                           f"{int(user[bad])} is not in {users_m}")
      mpos, mfound = encode.lookup_rows(m_sorted, movie)
      if not mfound.all():
        bad = int(np.flatnonzero(~mfound)[0])
        raise RawDataError(f"{where_r}, line {first + bad}, column 'MovieID': movie "
                           f"{int(movie[bad])} is not in {movies_m}")
      domain = u_domain[upos]
      keep = np.flatnonzero(domain >= 0)  # ages in no configured group are dropped
      upos, mpos = upos[keep], mpos[keep]
      out = np.empty((len(keep), len(sparse)), np.int64)
      for j, f in enumerate(sparse):
        table, col, kind = SPARSE_FEATURES[f]
        if f == "user_id":
          out[:, j] = user[keep]
        elif f == "movie_id":
          out[:, j] = movie[keep]
        elif kind == "domain":
          out[:, j] = domain[keep]
        elif f == "age":
          out[:, j] = u_age[upos]
        elif f == "genre":
          out[:, j] = m_genre[mpos]
        else:
          out[:, j] = u_codes[f][upos]
      dvals = np.empty((len(keep), len(dense)), np.float64)
      for j, q in enumerate(dense):
        dvals[:, j] = u_age[upos]
      labels = (rating[keep, None] > thresholds[None, :]).astype(np.uint8)
      yield prepare.Chunk(domain=domain[keep], labels=labels, sparse=out, dense=dvals,
                          time=ts[keep], user=user[keep], item=movie[keep],
                          row_hash=hashes[keep], origin=where_r)

  spec = prepare.PrepareSpec(
      dataset="movielens-1m",
      sparse=tuple(prepare.FeatureDef(f, "str" if f in coders else "int") for f in sparse),
      dense_names=tuple(dense),
      domain_names=tuple(domain_name(g) for g in groups),
      task_names=tuple(s["tasks"]),
      split=s["split"], split_ratios=tuple(s["split_ratios"]),
      split_seed=int(s["split_seed"]),
      vocabulary=s["vocabulary"],
      coders=coders,
      source={**source.describe(),
              "files": {"ratings": ratings_m, "users": users_m, "movies": movies_m},
              "age_groups": groups,
              "task_thresholds": dict(zip(s["tasks"], s["task_thresholds"]))})
  return prepare.prepare(chunks(), spec, out_dir, scratch_dir=scratch_dir, chunk_rows=chunk_rows)
