"""Damaged prepared data is refused in one line that names the file and says how
to prepare it again, before any of it trains."""

import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from m3oe_jax.data import fake_raw, integrity, pipeline
from m3oe_jax.data import prepared as prepared_data
from m3oe_jax.data.raw import storage
from m3oe_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[2]


def data_config(data_dir, top, placement="host"):
  return ml_collections.ConfigDict(dict(name="movielens", data_dir=str(data_dir),
                                        extracted_dir=str(top), download=False,
                                        placement=placement))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("damage")
  top = fake_raw.write_movielens(tmp / "raw", num_ratings=300, num_users=40, num_movies=50,
                                 seed=11)
  ds = prepared_data.load(data_config(tmp / "tfds", top))
  return tmp / "tfds", top, ds


@pytest.fixture
def copy(prepared, tmp_path):
  """A fresh copy of the prepared data: (its config maker, its prepared folder)."""
  data_dir, top, _ = prepared
  shutil.copytree(data_dir, tmp_path / "tfds")
  make = lambda placement="host": data_config(tmp_path / "tfds", top, placement)
  return make, pathlib.Path(os.fspath(prepared_data.make_builder(make()).data_path))


def write_in_place(path, index, value):
  """Overwrites one value of a .npy file in place: same size, same header."""
  a = np.load(path, mmap_mode="r+")
  a[index] = value
  a.flush()
  del a


def truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def garble(path):
  text = path.read_text()
  path.write_text(text[:len(text) // 2])


SPARSE = ["user_id", "movie_id", "gender", "occupation", "zip", "genre", "domain"]
CASES = {
    "truncated_sparse": ("columnar/train/sparse.npy", truncate,
                         r"3,424 bytes instead of 6,848 \(truncated\)"),
    "garbled_schema": (storage.PREPARED_SCHEMA_FILE, garble, r"unreadable \(JSONDecodeError"),
    "garbled_dataset_info": ("dataset_info.json", garble, r"unreadable \(JSONDecodeError"),
    "deleted_labels": ("columnar/validation/labels.npy", os.remove, "missing"),
    "deleted_schema": (storage.PREPARED_SCHEMA_FILE, os.remove, "missing"),
    "deleted_dataset_info": ("dataset_info.json", os.remove, "missing"),
    "id_out_of_range": ("columnar/test/sparse.npy",
                        lambda p: write_in_place(p, (5, 1), 10**6),
                        r"row 5, feature 'movie_id': id 1000000 is outside its "
                        r"vocabulary 0\.\.\d+"),
    "negative_id": ("columnar/train/sparse.npy", lambda p: write_in_place(p, (17, 0), -3),
                    r"row 17, feature 'user_id': id -3 is outside"),
    "label_7": ("columnar/train/labels.npy", lambda p: write_in_place(p, (9, 1), 7),
                r"row 9, task 'like': label 7\.0 is not 0 or 1"),
    "domain_out_of_range": ("columnar/validation/domain.npy",
                            lambda p: write_in_place(p, 2, 3),
                            r"row 2: domain 3 is outside 0\.\.2"),
    "dense_nan": ("columnar/train/dense.npy",
                  lambda p: write_in_place(p, (4, 0), np.nan),
                  r"row 4, feature 'age': dense value nan is not finite"),
    "other_dtype": ("columnar/train/domain.npy",
                    lambda p: np.save(p, np.load(p).astype(np.int64)),
                    r"holds a int64 array of shape \(240,\), expected int32 \(240,\)"),
    "rows_appended": ("columnar/test/labels.npy",
                      lambda p: p.write_bytes(p.read_bytes() + b"\0" * 8),
                      r"bytes after the array"),
}


def assert_names(error, folder, name, pattern):
  message = str(error)
  assert "\n" not in message
  assert message.startswith(f"{folder / name}: "), message
  assert re.search(pattern, message), message
  assert message.endswith(f"the prepared data in {folder} is damaged: delete that folder "
                          "and run again to prepare it anew from the raw data"), message


@pytest.mark.parametrize("case", sorted(CASES))
def test_damage_is_refused_at_load(case, copy):
  make, folder = copy
  name, damage, pattern = CASES[case]
  damage(folder / name)
  with pytest.raises(integrity.PreparedDataError) as info:
    prepared_data.load(make())
  assert isinstance(info.value, UserError)
  assert_names(info.value, folder, name, pattern)


@pytest.mark.parametrize("placement", ["device", "stream"])
def test_values_are_checked_in_every_placement(placement, copy):
  """'device' checks the columns before they go to the device; 'stream' checks
  every gathered batch, training and evaluation alike."""
  make, folder = copy
  name = "columnar/train/sparse.npy"
  write_in_place(folder / name, (200, 1), 10**6)
  if placement == "device":
    with pytest.raises(integrity.PreparedDataError) as info:
      prepared_data.load(make(placement))
  else:
    source = prepared_data.load(make(placement)).splits["train"]
    source.take(np.arange(100))  # rows before the damaged one
    with pytest.raises(integrity.PreparedDataError):
      list(pipeline.ordered_batches(source, 64))  # evaluation
    with pytest.raises(integrity.PreparedDataError) as info:
      for position in range(4):  # an epoch of training batches
        pipeline.shuffled_batch(source, 64, seed=0, position=position)
  assert_names(info.value, folder, name, r"row 200, feature 'movie_id': id 1000000")


def test_preparation_records_size_and_crc32_and_verify_finds_in_range_changes(copy):
  make, folder = copy
  schema = prepared_data.load(make()).schema
  files = schema.source["prepared_files"]
  assert sorted(files) == sorted(f"columnar/{s}/{k}.npy" for s in pipeline.SPLITS
                                 for k in ("sparse", "dense", "domain", "labels"))
  for name, record in files.items():
    size, crc = integrity.file_crc32(str(folder / name))
    assert record == {"bytes": size, "crc32": crc}
  summary = integrity.verify(str(folder), schema, pipeline.SPLITS, storage.COLUMNAR_DIR)
  assert "300 rows" in summary and "12 files' CRC-32 match" in summary
  # An id changed to another valid id: loading cannot tell, verify can.
  name = "columnar/train/sparse.npy"
  ids = np.load(folder / name)
  write_in_place(folder / name, (0, 0), 1 if ids[0, 0] != 1 else 2)
  prepared_data.load(make())
  with pytest.raises(integrity.PreparedDataError) as info:
    integrity.verify(str(folder), schema, pipeline.SPLITS, storage.COLUMNAR_DIR)
  assert_names(info.value, folder, name, r"CRC-32 [0-9a-f]{8} over .* but preparation "
               r"recorded [0-9a-f]{8}")


def test_data_prepared_before_the_record_still_loads(copy, caplog):
  make, folder = copy
  schema_path = folder / storage.PREPARED_SCHEMA_FILE
  schema = json.loads(schema_path.read_text())
  del schema["source"]["prepared_files"]
  schema_path.write_text(json.dumps(schema))
  with caplog.at_level(logging.INFO, logger="m3oe_jax.data"):
    ds = prepared_data.load(make())
  assert len(ds.splits["train"]) == 240
  assert "prepared before file checksums were recorded" in caplog.text
  summary = integrity.verify(str(folder), ds.schema, pipeline.SPLITS,
                             storage.COLUMNAR_DIR)
  assert "no CRC-32 recorded" in summary
  write_in_place(folder / "columnar/train/labels.npy", (0, 0), 7)
  with pytest.raises(integrity.PreparedDataError, match="label 7.0 is not 0 or 1"):
    prepared_data.load(make())


@pytest.mark.slow
def test_commands_print_one_line_and_exit_2(tmp_path):
  """--verify of intact data, then training on damaged data."""
  config = ["--config=configs/movielens.py:tiny_offline",
            f"--config.data.data_dir={tmp_path}/tfds"]
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  run = lambda module, *args: subprocess.run(
      [sys.executable, "-m", module] + config + list(args), cwd=REPO, env=env,
      capture_output=True, text=True, timeout=300)
  ok = run("m3oe_jax.data.prepared", "--verify")
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "12 files' CRC-32 match" in ok.stdout
  labels = next(tmp_path.rglob("columnar/train/labels.npy"))
  write_in_place(labels, (3, 0), 7)
  bad = run("m3oe_jax.train", f"--workdir={tmp_path}/run")
  assert bad.returncode == 2, bad.stderr[-3000:]
  last = bad.stderr.strip().splitlines()[-1]
  assert last.startswith(f"m3oe_jax.train: error: {labels}: row 3, task 'click': "
                         "label 7.0 is not 0 or 1; the prepared data in "), last
