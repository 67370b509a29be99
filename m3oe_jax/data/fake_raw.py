"""Raw files in the exact original KuaiRand and MovieLens-1M formats, generated.

For tests (tiny, written into a temporary folder), for the tiny archives kept in
`m3oe_jax/data/testdata/` (regenerate with `python -m m3oe_jax.data.fake_raw`),
and for the preparation benchmark (millions of rows, written streaming). The
labels depend on user, item and domain, so a model can learn something.

These files are *fake data in the real formats*; nothing here is real data.
"""

from __future__ import annotations

import gzip
import io
import os
import pathlib
import tarfile
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from m3oe_jax.data.datasets import kuairand as kr

TESTDATA = pathlib.Path(__file__).parent / "testdata"
TINY_KUAIRAND = TESTDATA / "KuaiRand-Pure-tiny.tar.gz"
TINY_MOVIELENS = TESTDATA / "ml-1m-tiny.zip"

# Tab distribution of the generated logs: tabs 1, 0, 4 are the most frequent.
TAB_P = np.array([0.2, 0.45, 0.06, 0.02, 0.14, 0.02, 0.03, 0.02, 0.01, 0.01, 0.01,
                  0.01, 0.01, 0.005, 0.005])
T0_MS = 1_649_347_200_000  # 2022-04-08 00:00 (+08:00 ignored)
DAY_MS = 86_400_000


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


class _CsvFile:
  """A CSV file with a plain header line (as pandas writes it) and rows written
  by pyarrow in blocks (strings quoted, which every CSV reader accepts)."""

  def __init__(self, path: pathlib.Path, schema: pa.Schema):
    self._f = open(path, "wb")
    self._f.write((",".join(schema.names) + "\n").encode())
    self._w = pa_csv.CSVWriter(self._f, schema, write_options=pa_csv.WriteOptions(
        include_header=False, quoting_style="needed"))

  def write_table(self, table: pa.Table) -> None:
    self._w.write_table(table)

  def close(self) -> None:
    self._w.close()
    self._f.close()


def _write_table(path: pathlib.Path, table: pa.Table) -> "_CsvFile":
  return _CsvFile(path, table.schema)


def kuairand_log_table(rng: np.random.Generator, n: int, num_users: int, num_videos: int,
                       day0: int, days: int, is_rand: int, effects) -> pa.Table:
  u_eff, v_eff, t_eff = effects
  user = rng.integers(0, num_users, n)
  video = rng.integers(0, num_videos, n)
  tab = rng.choice(len(TAB_P), n, p=TAB_P)
  time_ms = T0_MS + (day0 + rng.integers(0, days, n)) * DAY_MS + rng.integers(0, DAY_MS, n)
  day = (time_ms - T0_MS) // DAY_MS
  date = 20220408 + day  # fine for the days generated here (no month roll-over needed)
  date = np.where(date > 20220430, date - 20220431 + 20220501, date)
  msec_of_day = (time_ms - T0_MS) % DAY_MS
  hourmin = (msec_of_day // 3_600_000) * 100 + (msec_of_day // 60_000) % 60
  logit = u_eff[user] + v_eff[video] + t_eff[tab]
  click = (rng.random(n) < _sigmoid(logit)).astype(np.int64)
  duration = rng.integers(3_000, 120_000, n)
  play = np.where(click == 1, (duration * rng.random(n) * 1.5).astype(np.int64),
                  rng.integers(0, 3_000, n))
  long_view = (play >= np.minimum(duration, 18_000)).astype(np.int64)
  cols = {
      "user_id": user, "video_id": video, "date": date, "hourmin": hourmin,
      "time_ms": time_ms, "is_click": click,
      "is_like": (click & (rng.random(n) < 0.1)).astype(np.int64),
      "is_follow": (click & (rng.random(n) < 0.02)).astype(np.int64),
      "is_comment": (click & (rng.random(n) < 0.01)).astype(np.int64),
      "is_forward": (click & (rng.random(n) < 0.01)).astype(np.int64),
      "is_hate": (rng.random(n) < 0.002).astype(np.int64),
      "long_view": long_view, "play_time_ms": play, "duration_ms": duration,
      "profile_stay_time": rng.integers(0, 50, n) * (rng.random(n) < 0.05),
      "comment_stay_time": rng.integers(0, 50, n) * (rng.random(n) < 0.05),
      "is_profile_enter": (rng.random(n) < 0.05).astype(np.int64),
      "is_rand": np.full(n, is_rand), "tab": tab,
  }
  return pa.table({c: pa.array(cols[c]) for c in kr.LOG_COLUMNS})


def _ranges(values, edges):
  labels = ["0"] + [f"({a},{b}]" for a, b in zip(edges[:-1], edges[1:])] + [f"{edges[-1]}+"]
  idx = np.where(values == 0, 0, np.searchsorted(edges, values, side="left"))
  return [labels[min(i, len(labels) - 1)] for i in idx]


def kuairand_user_table(rng, num_users: int) -> pa.Table:
  n = num_users
  follow = rng.geometric(0.05, n) - 1
  fans = rng.geometric(0.02, n) - 1
  friend = rng.geometric(0.3, n) - 1
  register = rng.integers(10, 2000, n)
  cols = {
      "user_id": np.arange(n),
      "user_active_degree": rng.choice(["high_active", "full_active", "middle_active",
                                        "UNKNOWN"], n).tolist(),
      "is_lowactive_period": rng.integers(0, 2, n),
      "is_live_streamer": rng.integers(0, 2, n),
      "is_video_author": rng.integers(0, 2, n),
      "follow_user_num": follow, "follow_user_num_range": _ranges(follow, [10, 50, 100]),
      "fans_user_num": fans, "fans_user_num_range": _ranges(fans, [10, 100, 1000]),
      "friend_user_num": friend, "friend_user_num_range": _ranges(friend, [5, 30]),
      "register_days": register,
      "register_days_range": _ranges(register, [60, 365, 730]),
  }
  for i in range(18):
    v = rng.integers(0, 3 + i, n).astype(object)
    if i in (4, 12):  # the real file has gaps in some of these columns
      v[rng.random(n) < 0.1] = None
    cols[f"onehot_feat{i}"] = pa.array(v.tolist(), pa.int64())
  return pa.table({c: (cols[c] if isinstance(cols[c], pa.Array) else pa.array(cols[c]))
                   for c in kr.USER_COLUMNS})


def kuairand_video_table(rng, num_videos: int) -> pa.Table:
  n = num_videos
  dur = rng.integers(3_000, 300_000, n).astype(float)
  dur[rng.random(n) < 0.05] = np.nan
  music_type = rng.choice([4.0, 7.0, 8.0, 9.0, np.nan], n)
  tags = [None if rng.random() < 0.05 else ",".join(str(t) for t in rng.choice(
      60, rng.integers(1, 4), replace=False)) for _ in range(n)]
  cols = {
      "video_id": pa.array(np.arange(n)),
      "author_id": pa.array(rng.integers(0, max(n // 3, 1), n)),
      "video_type": pa.array(rng.choice(["NORMAL", "AD"], n, p=[0.95, 0.05]).tolist()),
      "upload_dt": pa.array([f"2022-0{m}-1{d}" for m, d in
                             zip(rng.integers(1, 5, n), rng.integers(0, 9, n))]),
      "upload_type": pa.array(rng.choice(["ShortImport", "LongImport", "Web"], n).tolist()),
      "visible_status": pa.array(rng.choice(["public", "private"], n, p=[0.97, 0.03]).tolist()),
      "video_duration": pa.array(dur, from_pandas=True),
      "server_width": pa.array(rng.choice([720, 1080], n)),
      "server_height": pa.array(rng.choice([1280, 1920], n)),
      "music_id": pa.array(rng.integers(0, 1000, n)),
      "music_type": pa.array(music_type, from_pandas=True),
      "tag": pa.array(tags, pa.string()),
  }
  return pa.table({c: cols[c] for c in kr.VIDEO_COLUMNS})


def write_kuairand(folder: str | os.PathLike, *, num_rows: int = 3000, num_users: int = 80,
                   num_videos: int = 150, size: str = "pure", seed: int = 0,
                   block_rows: int = 1_000_000) -> pathlib.Path:
  """Writes `<folder>/KuaiRand-<Size>/data/*.csv` and returns the top folder.

  The rows are spread over the three logs like Pure (55%, 45%, and a random
  log); written in blocks, so any `num_rows` fits in memory.
  """
  top = pathlib.Path(folder) / kr.ARCHIVES[size].top_dir
  data = top / "data"
  data.mkdir(parents=True, exist_ok=True)
  s = kr.SUFFIX[size]
  rng = np.random.default_rng(seed)
  effects = (rng.normal(0, 1, num_users), rng.normal(0, 1, num_videos),
             rng.normal(0, 0.5, len(TAB_P)))
  effects = (effects[0], effects[1], effects[2] - 1.0)
  plan = [(f"log_standard_4_08_to_4_21_{s}.csv", 0.30, 0, 14, 0),
          (f"log_standard_4_22_to_5_08_{s}.csv", 0.25, 14, 17, 0),
          (f"log_random_4_22_to_5_08_{s}.csv", 0.45, 14, 17, 1)]
  remaining = num_rows
  for i, (name, share, day0, days, is_rand) in enumerate(plan):
    n_file = remaining if i == len(plan) - 1 else int(num_rows * share)
    remaining -= n_file
    writer = None
    for start in range(0, n_file, block_rows):
      n = min(block_rows, n_file - start)
      t = kuairand_log_table(rng, n, num_users, num_videos, day0, days, is_rand, effects)
      if writer is None:
        writer = _write_table(data / name, t)
      writer.write_table(t)
    if writer is None:  # an empty log: header only
      t = kuairand_log_table(rng, 0, num_users, num_videos, day0, days, is_rand, effects)
      writer = _write_table(data / name, t)
    writer.close()
  for name, table in ((f"user_features_{s}.csv", kuairand_user_table(rng, num_users)),
                      (f"video_features_basic_{s}.csv",
                       kuairand_video_table(rng, num_videos))):
    w = _write_table(data / name, table)
    w.write_table(table)
    w.close()
  stat = pa.table({"video_id": np.arange(num_videos),
                   "counts": rng.integers(0, 1000, num_videos)})
  w = _write_table(data / f"video_features_statistic_{s}.csv", stat)
  w.write_table(stat)
  w.close()
  return top


def write_movielens(folder: str | os.PathLike, *, num_ratings: int = 3000,
                    num_users: int = 60, num_movies: int = 120, seed: int = 0
                    ) -> pathlib.Path:
  """Writes `<folder>/ml-1m/{ratings,users,movies}.dat` (latin-1, `::`)."""
  top = pathlib.Path(folder) / "ml-1m"
  top.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  ages = np.array([1, 18, 25, 35, 45, 50, 56])
  age_p = np.array([0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06])
  user_age = rng.choice(ages, num_users, p=age_p)
  # every age code appears at least once
  user_age[:len(ages)] = ages
  users = [f"{u + 1}::{rng.choice(['F', 'M'])}::{user_age[u]}::{rng.integers(0, 21)}::"
           f"{rng.integers(10000, 99999)}{'-1234' if rng.random() < 0.05 else ''}"
           for u in range(num_users)]
  genres = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
            "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
            "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
  titles = ["Café", "Amélie", "Señor", "Zoë", "Night", "Day", "City", "Love", "War"]
  movies = []
  for m in range(num_movies):
    g = "|".join(rng.choice(genres, rng.integers(1, 4), replace=False))
    t = f"{rng.choice(titles)} {rng.choice(titles)} ({rng.integers(1920, 2001)})"
    movies.append(f"{m + 1}::{t}::{g}")
  u_eff = rng.normal(0, 1, num_users)
  m_eff = rng.normal(0, 1, num_movies)
  pairs = set()
  lines = []
  t0 = 956_703_932
  while len(lines) < num_ratings:
    u, m = int(rng.integers(num_users)), int(rng.integers(num_movies))
    if (u, m) in pairs:
      continue
    pairs.add((u, m))
    score = 3.5 + u_eff[u] + m_eff[m] + rng.normal(0, 0.7)
    r = int(np.clip(np.round(score), 1, 5))
    ts = t0 + int(rng.integers(0, 90 * 86400))
    lines.append(f"{u + 1}::{m + 1}::{r}::{ts}")
  for name, rows in (("ratings.dat", lines), ("users.dat", users), ("movies.dat", movies)):
    (top / name).write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
  return top


def pack_tar_gz(top: str | os.PathLike, archive: str | os.PathLike) -> pathlib.Path:
  """Packs folder `top` as `<top name>/...` into a byte-for-byte reproducible tar.gz."""
  top = pathlib.Path(top)
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    for path in sorted(p for p in top.rglob("*")):
      info = tar.gettarinfo(str(path), arcname=str(top.name / path.relative_to(top)))
      info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
      info.mode = 0o755 if path.is_dir() else 0o644
      if path.is_file():
        with open(path, "rb") as f:
          tar.addfile(info, f)
      else:
        tar.addfile(info)
  with open(archive, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f,
                                               mtime=0) as gz:
    gz.write(buf.getvalue())
  return pathlib.Path(archive)


def pack_zip(top: str | os.PathLike, archive: str | os.PathLike) -> pathlib.Path:
  top = pathlib.Path(top)
  with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
    for path in sorted(p for p in top.rglob("*") if p.is_file()):
      info = zipfile.ZipInfo(str(top.name / path.relative_to(top)), (1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      z.writestr(info, path.read_bytes())
  return pathlib.Path(archive)


def make_testdata() -> None:
  """Regenerates the tiny archives the `tiny_offline` configs read."""
  import hashlib
  import tempfile
  TESTDATA.mkdir(exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    pack_tar_gz(write_kuairand(tmp, num_rows=3000, num_users=80, num_videos=150, seed=1),
                TINY_KUAIRAND)
    pack_zip(write_movielens(tmp, num_ratings=3000, num_users=60, num_movies=120, seed=1),
             TINY_MOVIELENS)
  for p, algo in ((TINY_KUAIRAND, "md5"), (TINY_MOVIELENS, "sha256")):
    h = hashlib.new(algo, p.read_bytes()).hexdigest()
    print(f"{p.name}: {p.stat().st_size:,} bytes, {algo}:{h}")


if __name__ == "__main__":
  make_testdata()
