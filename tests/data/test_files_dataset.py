"""The files dataset: the shipped declaration prepares and trains; each column
role, label rule and split mode; side-table rows without a match counted."""

import numpy as np
import pyarrow.csv as pa_csv
import pytest

from configs import files as files_config
from m3oe_jax.data import check_config, load_dataset
from tests.data import files_helpers as fh


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  return fh.write_dataset(tmp_path_factory.mktemp("files") / "raw")


def _by_split(table, fold):
  keep = [f == fold for f in table.column("fold").to_pylist()]
  return table.filter(keep)


def test_shipped_dataset_prepares_and_trains(tmp_path):
  train = pytest.importorskip("m3oe_jax.train")
  c = files_config.get_config("hashed")
  c.data.data_dir = str(tmp_path / "tfds")
  c.model.embed_rows_multiple = 64  # hashed tables padded for row sharding
  c.num_epochs = 1
  result = train.train_and_evaluate(c, str(tmp_path / "work"))
  assert result["test"]
  schema = load_dataset(c.data).schema
  assert schema.source["num_rows"] == {"train": 3200, "validation": 400, "test": 400}
  assert schema.domain_names == ("feed", "related", "search")  # ConfigDict sorts keys
  vocab = dict(zip(schema.sparse_names, schema.vocab_sizes))
  assert vocab["user_id"] == 513 and vocab["city"] == 65
  assert schema.source["sparse_vocabularies"]["user_id"]["mode"] == "hash"
  assert schema.source["checks"]["unmatched_side_rows"]["users"]["rows"] == 80


def test_every_config_variant_checks(tmp_path):
  for v in files_config.VARIANTS:
    c = files_config.get_config(v)
    check_config(c.data)
    assert c.data.name == "files"


def test_roles_and_label_rules(raw, tmp_path):
  ds = fh.load(tmp_path, fh.declaration(raw))
  s = ds.schema
  logs = pa_csv.read_csv(raw / "logs.csv")
  for k, split in enumerate(("train", "validation", "test")):
    part = _by_split(logs, split)
    cols = ds.splits[split].columns
    labels = dict(zip(s.task_names, cols["labels"].T))
    np.testing.assert_array_equal(labels["click"], part.column("click").to_numpy())
    np.testing.assert_array_equal(labels["like"], part.column("rating").to_numpy() > 3)
    np.testing.assert_array_equal(labels["comment"],
                                  [c is not None and c != "" for c in
                                   part.column("comment").to_pylist()])
    np.testing.assert_array_equal(cols["domain"],
                                  [0 if x == "a" else 1 for x in part.column("scene").to_pylist()])
  train = _by_split(logs, "train")
  price = train.column("price").to_numpy()
  dense = dict(zip(s.dense_names, ds.splits["train"].columns["dense"].T))
  np.testing.assert_allclose(dense["price"], (price - price.min()) / np.ptp(price), rtol=1e-6)
  ages = {"u0": 20, "u1": 30, "u2": 40, "u3": 50}
  age = np.array([ages.get(u, np.nan) for u in train.column("user").to_pylist()])
  known = ~np.isnan(age)
  expected = (age[known] - age[known].mean()) / age[known].std()
  np.testing.assert_allclose(dense["age"][known], expected, rtol=1e-5)
  assert np.all(dense["age"][~known] == 0)  # unmatched: no value, 0 after scaling
  sparse = ds.splits["train"].columns["sparse"]
  col = {n: i for i, n in enumerate(s.sparse_columns)}
  users = train.column("user").to_pylist()
  user_ids = sparse[:, col["user"]]
  assert len(set(zip(users, user_ids))) == len(set(users)) == len(set(user_ids))
  assert s.widths[s.sparse_names.index("tags")] == 2
  tags = sparse[:, [col["tags[0]"], col["tags[1]"]]]
  by_user = {u: tuple(t) for u, t in zip(users, tags)}
  assert by_user["u4"] == (0, 0) and by_user["u2"] == (0, 0)  # unmatched, and empty
  assert by_user["u0"] == by_user["u3"] and 0 not in by_user["u0"]  # x|y; x|y|z cut at 2
  assert by_user["u1"][1] == 0 and by_user["u1"][0] == by_user["u0"][1]  # y
  checks = s.source["checks"]
  assert checks["unmatched_side_rows"]["users"] == {
      "rows": 12, "of": fh.ROWS, "policy": "keep", "files": [str(raw / "users.csv")]}
  assert checks["multi_valued_truncated_rows"] == {"tags": 1}


def test_log_scaling(raw, tmp_path):
  ds = fh.load(tmp_path, fh.declaration(raw, dense={"price": "log"}, side_tables=[],
                                        multi_valued={}))
  price = _by_split(pa_csv.read_csv(raw / "logs.csv"), "train").column("price").to_numpy()
  np.testing.assert_allclose(ds.splits["train"].columns["dense"][:, 0], np.log1p(price),
                             rtol=1e-6)
  assert ds.schema.source["dense_scaling"]["price"]["transform"] == "log1p"


def test_unmatched_rows_dropped_are_counted(raw, tmp_path):
  ds = fh.load(tmp_path, fh.declaration(raw, unmatched="drop"))
  assert sum(ds.schema.source["num_rows"].values()) == fh.ROWS - 12
  checks = ds.schema.source["checks"]
  assert checks["rows_dropped_unmatched"] == 12
  assert checks["unmatched_side_rows"]["users"]["policy"] == "drop"


def test_top_n_domains(raw, tmp_path):
  ds = fh.load(tmp_path, fh.declaration(raw, domain={"column": "scene", "top_n": 1}))
  assert ds.schema.domain_names == ("a",)
  assert sum(ds.schema.source["num_rows"].values()) == 40
  assert ds.schema.source["checks"]["rows_outside_top_n_domains"] == 20


@pytest.mark.parametrize("mode", ["temporal", "random", "column", "files"])
def test_split_modes(raw, tmp_path, mode):
  logs = pa_csv.read_csv(raw / "logs.csv")
  split = {"temporal": {"mode": "temporal", "column": "time"},
           "random": {"mode": "random", "seed": 3},
           "column": {"mode": "column", "column": "fold",
                      "values": {"train": "train", "validation": "validation",
                                 "test": "test"}},
           "files": {"mode": "files", "validation": str(tmp_path / "val.csv"),
                     "test": str(tmp_path / "test*.csv")}}[mode]
  files = fh.declaration(raw, split=split)
  if mode == "files":
    pa_csv.write_csv(logs.slice(0, 40), str(tmp_path / "train.csv"))
    pa_csv.write_csv(logs.slice(40, 12), str(tmp_path / "val.csv"))
    pa_csv.write_csv(logs.slice(52), str(tmp_path / "test.csv"))
    files["logs"] = str(tmp_path / "train.csv")
  ds = fh.load(tmp_path / "tfds", files)
  sizes = ds.schema.source["num_rows"]
  expected = {"temporal": (48, 6, 6), "random": (48, 6, 6), "column": (48, 6, 6),
              "files": (40, 12, 8)}[mode]
  assert (sizes["train"], sizes["validation"], sizes["test"]) == expected
  clicks = ds.splits["test"].columns["labels"][:, ds.schema.task_names.index("click")]
  if mode == "temporal":  # the latest rows, in time order
    np.testing.assert_array_equal(clicks, logs.column("click").to_numpy()[54:])
  if mode == "random":  # seeded: the same rows again, other rows under another seed
    again = fh.load(tmp_path / "tfds2", files)
    np.testing.assert_array_equal(again.splits["test"].columns["sparse"],
                                  ds.splits["test"].columns["sparse"])
    files["split"] = {"mode": "random", "seed": 4}
    other = fh.load(tmp_path / "tfds3", files)
    assert not np.array_equal(other.splits["train"].columns["dense"],
                              ds.splits["train"].columns["dense"])
