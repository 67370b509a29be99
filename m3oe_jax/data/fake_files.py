"""Generated impression logs in a real layout, for the files dataset.

`python -m m3oe_jax.data.fake_files` writes the small dataset shipped in
`m3oe_jax/data/testdata/files/` (what `configs/files.py` prepares):

  impressions.csv  time, user_id, item_id, scenario, device, position, click,
                   watch_seconds, comment
  users.csv        user_id, age, gender, city, interests ("a|b" lists)
  items.csv        item_id, category, price, tags ("a|b|c" lists)

A few impressions name users missing from users.csv (counted when joined).
Labels depend on the features, so a model learns something. Everything is a
function of the seed (and, for `impression_block`, of the block's index), so
the files are the same on every machine; the preparation benchmark writes
millions of rows with the same functions.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

TESTDATA = pathlib.Path(__file__).resolve().parent / "testdata" / "files"
SCENARIOS = np.array(["feed", "search", "related"])
SCENARIO_WEIGHTS = np.array([0.6, 0.3, 0.1])
DEVICES = np.array(["ios", "android", "web"])
GENDERS = np.array(["f", "m", ""])
TOPICS = np.array(["sport", "music", "news", "food", "travel", "tech", "games", "art"])
CATEGORIES = np.array(["video", "article", "live", "short"])
MISSING_USERS = 0.02  # share of user ids beyond the users table


def _lists(rng, n: int, most: int) -> np.ndarray:
  """n '|'-separated topic lists of 0..most topics."""
  counts = rng.integers(0, most + 1, n)
  picks = rng.integers(0, len(TOPICS), (n, most))
  return np.array(["|".join(TOPICS[picks[i, :counts[i]]]) for i in range(n)], object)


def users_table(num_users: int, seed: int = 0) -> pa.Table:
  rng = np.random.default_rng([seed, 1])
  return pa.table({
      "user_id": [f"u{i}" for i in range(num_users)],
      "age": rng.integers(16, 70, num_users),
      "gender": GENDERS[rng.integers(0, 3, num_users)],
      "city": [f"c{i}" for i in rng.zipf(1.5, num_users) % 5000],
      "interests": _lists(rng, num_users, 3),
  })


def items_table(num_items: int, seed: int = 0) -> pa.Table:
  rng = np.random.default_rng([seed, 2])
  return pa.table({
      "item_id": [f"i{i}" for i in range(num_items)],
      "category": CATEGORIES[rng.integers(0, len(CATEGORIES), num_items)],
      "price": np.round(rng.lognormal(2.0, 1.0, num_items), 2),
      "tags": _lists(rng, num_items, 4),
  })


def impression_block(block: int, rows: int, num_users: int, num_items: int,
                     seed: int = 0, start_time: int = 1_700_000_000) -> pa.Table:
  """Block `block` of the impressions: `rows` rows whose times follow the
  previous blocks'."""
  rng = np.random.default_rng([seed, 3, block])
  known = int(num_users * (1 - MISSING_USERS)) or 1
  user = rng.integers(0, num_users, rows)
  user = np.where(user < known, user, num_users + user)  # beyond the table
  item = np.minimum(rng.zipf(1.3, rows) - 1, num_items - 1)
  scenario = rng.choice(len(SCENARIOS), rows, p=SCENARIO_WEIGHTS)
  position = rng.integers(0, 50, rows)
  affinity = np.sin(user * 0.7 + item * 1.3) + 0.5 * (scenario == 1) - 0.03 * position
  click = (rng.random(rows) < 1 / (1 + np.exp(-(affinity - 0.5)))).astype(np.int64)
  watch = np.round(click * rng.exponential(20 + 15 * np.cos(item), rows), 1)
  commented = click.astype(bool) & (rng.random(rows) < 0.15)
  return pa.table({
      "time": start_time + block * rows * 10 + np.sort(rng.integers(0, rows * 10, rows)),
      "user_id": pc.binary_join_element_wise(
          "u", pa.array(user).cast(pa.string()), ""),
      "item_id": pc.binary_join_element_wise(
          "i", pa.array(item).cast(pa.string()), ""),
      "scenario": SCENARIOS[scenario],
      "device": DEVICES[rng.integers(0, 3, rows)],
      "position": position,
      "click": click,
      "watch_seconds": watch,
      "comment": np.where(commented, "nice", ""),
  })


def write_csv(table: pa.Table, path: pathlib.Path | str, append_to=None):
  """Writes (or, given an open writer, appends) `table` as CSV."""
  if append_to is not None:
    append_to.write_table(table)
    return append_to
  pa_csv.write_csv(table, str(path))
  return None


def write_testdata(folder: pathlib.Path = TESTDATA, rows: int = 4000, num_users: int = 300,
                   num_items: int = 200, seed: int = 0) -> list[pathlib.Path]:
  """The shipped small dataset."""
  folder.mkdir(parents=True, exist_ok=True)
  paths = [folder / "impressions.csv", folder / "users.csv", folder / "items.csv"]
  write_csv(impression_block(0, rows, num_users, num_items, seed), paths[0])
  write_csv(users_table(num_users, seed), paths[1])
  write_csv(items_table(num_items, seed), paths[2])
  return paths


if __name__ == "__main__":
  for p in write_testdata():
    print(p, p.stat().st_size)
