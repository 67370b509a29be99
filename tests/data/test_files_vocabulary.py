"""Vocabularies of the files dataset: hashed ids stable across processes and
equal for equal values, min_count's OOV, and the file formats read alike."""

import gzip
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from m3oe_jax.data.raw import hashing
from tests.data import files_helpers as fh
from tests.helpers import REPO

VALUES = ["u0", "u1", "héllo", "", "42", "a|b"]


def test_hashing_is_the_same_in_another_process():
  code = ("from m3oe_jax.data.raw import hashing; "
          f"print(list(hashing.hashed_ids({VALUES!r}, 1000)))")
  outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO, env={"PYTHONPATH": str(REPO),
                                                    "PYTHONHASHSEED": str(seed)}).stdout
          for seed in (1, 2)]
  here = list(hashing.hashed_ids(VALUES, 1000))
  assert outs[0] == outs[1] == f"{here}\n"
  assert all(1 <= i <= 1000 for i in here)


def test_hashing_is_keyed_blake2b():
  import hashlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.blake2b(b"u1", digest_size=8, key=hashing.HASH_KEY).digest()
  assert hashing.hashed_ids(["u1"], 97)[0] == 1 + int.from_bytes(digest, "little") % 97


def test_hashed_feature_ids(tmp_path):
  raw = fh.write_dataset(tmp_path / "raw")
  files = fh.declaration(raw, categorical={
      "user": {"vocabulary": {"mode": "hash", "buckets": 50}}, "item": {}})
  ds = fh.load(tmp_path / "tfds", files)
  s = ds.schema
  assert dict(zip(s.sparse_names, s.vocab_sizes))["user"] == 51
  assert s.source["sparse_vocabularies"]["user"]["mode"] == "hash"
  assert s.source["sparse_vocabularies"]["user"]["buckets"] == 50
  j = s.sparse_columns.index("user")
  users = [u for split in ("train", "validation", "test")
           for u in fh.log_table().filter(
               [f == split for f in fh.log_table().column("fold").to_pylist()])
           .column("user").to_pylist()]
  ids = np.concatenate([ds.splits[k].columns["sparse"][:, j]
                        for k in ("train", "validation", "test")])
  np.testing.assert_array_equal(ids, hashing.hashed_ids(users, 50))


def test_min_count_sends_rare_values_to_oov(tmp_path):
  raw = tmp_path / "raw"
  fh.write_dataset(raw)
  logs = fh.log_table()
  items = [f"i{k % 3}" if k % 10 else f"rare{k}" for k in range(fh.ROWS)]
  items[1] = items[2] = "twice"
  logs = logs.set_column(logs.schema.get_field_index("item"), "item", pa.array(items))
  pa_csv.write_csv(logs, str(raw / "logs.csv"))
  files = fh.declaration(raw, categorical={"user": {},
                                           "item": {"vocabulary": {"min_count": 3}}})
  ds = fh.load(tmp_path / "tfds", files)
  j = ds.schema.sparse_columns.index("item")
  train = logs.filter([f == "train" for f in logs.column("fold").to_pylist()])
  got = dict(zip(train.column("item").to_pylist(), ds.splits["train"].columns["sparse"][:, j]))
  assert got["twice"] == 0 and all(v == 0 for k, v in got.items() if k.startswith("rare"))
  assert len({got["i0"], got["i1"], got["i2"]}) == 3 and 0 not in (got["i0"], got["i1"])
  assert dict(zip(ds.schema.sparse_names, ds.schema.vocab_sizes))["item"] == 4
  assert ds.schema.source["oov_rows"]["train"]["item"] == sum(
      1 for i in train.column("item").to_pylist() if i == "twice" or i.startswith("rare"))


@pytest.mark.parametrize("fmt", ["parquet", "csv.gz", "tsv"])
def test_formats_read_the_same_rows(tmp_path, fmt):
  raw = fh.write_dataset(tmp_path / "raw")
  base = fh.load(tmp_path / "tfds_csv", fh.declaration(raw))
  path = raw / f"logs.{fmt}"
  table = fh.log_table()
  if fmt == "parquet":
    pq.write_table(table, str(path))
  elif fmt == "csv.gz":
    path.write_bytes(gzip.compress((raw / "logs.csv").read_bytes()))
  else:
    pa_csv.write_csv(table, str(path), pa_csv.WriteOptions(delimiter="\t"))
  other = fh.load(tmp_path / f"tfds_{fmt}", fh.declaration(raw, logs=str(path)))
  for split in ("train", "validation", "test"):
    for key in ("sparse", "dense", "domain", "labels"):
      np.testing.assert_array_equal(other.splits[split].columns[key],
                                    base.splits[split].columns[key], err_msg=f"{split} {key}")


SHARDED_RUN = """
import json, sys
import jax, numpy as np
from configs import files
from m3oe_jax import sharding
from m3oe_jax.data import load_dataset
from m3oe_jax.trainer import Trainer

losses = {}
for data, model, axis in ((1, 1, ""), (2, 2, "model"), (4, 1, "data")):
  config = files.get_config("hashed")
  config.data.data_dir = sys.argv[1]
  config.model.embed_rows_multiple = 4
  config.mesh.update(dict(data=data, model=model, embedding_axis=axis))
  dataset = load_dataset(config.data)
  trainer = Trainer(config, dataset, sharding.make_mesh(config.mesh, jax.devices()[:data * model]))
  state = trainer.initial_state(config.seed)
  table = state.params["embedding"]["user_id"]
  shards = sorted({s.data.shape[0] for s in table.addressable_shards})
  rows = table.shape[0]
  state, out = trainer.model_step(state, trainer.train_batch(0))
  losses[f"{data}x{model}"] = [float(out["loss"]), rows, shards]
print(json.dumps(losses))
"""


def test_hashed_tables_row_shard_over_a_mesh(tmp_path):
  """Hashed tables (513 ids, padded to 516 rows) sharded by rows over 'model'
  or 'data' give the loss of one device."""
  import json  # pylint: disable=g-import-not-at-top
  from tests.helpers import cpu_env  # pylint: disable=g-import-not-at-top
  out = subprocess.run([sys.executable, "-c", SHARDED_RUN, str(tmp_path / "tfds")],
                       capture_output=True, text=True, cwd=REPO, timeout=600,
                       env={**cpu_env(4), "PYTHONPATH": str(REPO)})
  assert out.returncode == 0, out.stderr[-3000:]
  losses = json.loads(out.stdout.strip().splitlines()[-1])
  assert losses["1x1"][1] == 516 and losses["1x1"][2] == [516]
  assert losses["2x2"][2] == [258] and losses["4x1"][2] == [129]  # rows split
  for mesh in ("2x2", "4x1"):
    np.testing.assert_allclose(losses[mesh][0], losses["1x1"][0], rtol=1e-4)
