"""Small hand-made files datasets for the files tests: logs, a side table and
their declaration, and loading every prepared row back."""

import pathlib

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from m3oe_jax.data import load_dataset
from m3oe_jax.data.pipeline import SPLITS

ROWS = 60


def log_table(rows: int = ROWS) -> pa.Table:
  """Impressions of 5 users (u4 is not in the users table) over 3 items and 2
  scenes, with every label kind."""
  i = np.arange(rows)
  return pa.table({
      "time": 1000 + 10 * i,
      "user": [f"u{k % 5}" for k in i],
      "item": [f"i{k % 3}" for k in i],
      "scene": ["a" if k % 3 else "b" for k in i],
      "click": (i % 2).astype(np.int64),
      "rating": (i % 5 + 1).astype(np.int64),
      "comment": ["" if k % 4 else "ok" for k in i],
      "price": (i % 7).astype(np.float64) + 0.5,
      "fold": ["test" if k % 10 == 7 else "validation" if k % 10 == 8 else "train"
               for k in i],
  })


def users_table() -> pa.Table:
  return pa.table({"user": ["u0", "u1", "u2", "u3"], "age": [20, 30, 40, 50],
                   "tags": ["x|y", "y", "", "x|y|z"]})


def write_dataset(folder: pathlib.Path, rows: int = ROWS) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  pa_csv.write_csv(log_table(rows), str(folder / "logs.csv"))
  pa_csv.write_csv(users_table(), str(folder / "users.csv"))
  return folder


def declaration(folder: pathlib.Path, **changes) -> dict:
  d = {
      "logs": str(folder / "logs.csv"),
      "side_tables": [{"name": "users", "path": str(folder / "users.csv"), "key": "user",
                       "columns": ["age", "tags"]}],
      "unmatched": "keep",
      "categorical": {"user": {}, "item": {}},
      "multi_valued": {"tags": {"separator": "|", "max_values": 2}},
      "dense": {"price": "minmax", "age": "standard"},
      "domain": {"column": "scene", "values": {"a": "A", "b": "B"}},
      "tasks": {"click": {"column": "click"},
                "like": {"column": "rating", "rule": "above", "threshold": 3},
                "comment": {"column": "comment", "rule": "present"}},
      "split": {"mode": "column", "column": "fold"},
  }
  d.update(changes)
  return d


def data_config(data_dir, files: dict) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(name="files", data_dir=str(data_dir), placement="host"))
  c.files = files
  return c


def all_rows(dataset) -> dict[str, np.ndarray]:
  """Every split's columns, concatenated in split order."""
  return {k: np.concatenate([dataset.splits[s].columns[k] for s in SPLITS])
          for k in ("sparse", "dense", "domain", "labels")}


def load(data_dir, files: dict):
  return load_dataset(data_config(data_dir, files))
