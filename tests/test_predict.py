"""`m3oe_jax.predict` on a tiny run of `configs/files.py`: the probabilities
`evaluate` computes and the exported model's, unknown ids and domains, a
missing column, the output format, and streaming in several batches."""

import csv
import json
import subprocess
import sys

import jax
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from configs import files as files_config
from m3oe_jax import export, params_io, predict, sharding
from m3oe_jax.data import load_dataset, pipeline
from m3oe_jax.data.raw import RawDataError, declaration, hashing, new_rows, roles
from m3oe_jax.errors import ConfigError
from m3oe_jax.trainer import Evaluator

SHIPPED = files_config.TESTDATA
LABELS = ("click", "watch_seconds", "comment")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A one-epoch run on the shipped files dataset: (workdir, config)."""
  train = pytest.importorskip("m3oe_jax.train")
  root = tmp_path_factory.mktemp("predict")
  c = files_config.get_config("default")
  c.data.data_dir = str(root / "tfds")
  c.num_epochs = 1
  train.train_and_evaluate(c, str(root / "work"))
  return str(root / "work"), c


@pytest.fixture(scope="module")
def test_rows():
  """The shipped logs' test-split rows (the latest tenth by time, ties in file
  order), in file order, without their label columns."""
  logs = pa_csv.read_csv(SHIPPED / "impressions.csv")
  order = np.argsort(logs.column("time").to_numpy(), kind="stable")
  rows = np.sort(order[len(order) - len(order) // 10:])
  return logs.take(rows).drop_columns(list(LABELS))


def _write(table: pa.Table, path) -> str:
  pa_csv.write_csv(table, str(path))
  return str(path)


def _scores(path) -> pa.Table:
  return pq.read_table(path) if str(path).endswith(".parquet") else pa_csv.read_csv(path)


def _probs(table: pa.Table, tasks) -> np.ndarray:
  return np.stack([table.column(f"p_{t}").to_numpy() for t in tasks], axis=1)


def test_same_as_evaluate(run, test_rows, tmp_path):
  workdir, config = run
  logs = _write(test_rows, tmp_path / "test.csv")
  summary = predict.predict_files(workdir, [logs], str(tmp_path / "p.parquet"),
                                  keys=["time", "user_id"])
  assert summary.rows == 400 and summary.skipped_unknown_domain == 0
  dataset = load_dataset(config.data)
  evaluator = Evaluator(config, dataset, sharding.make_mesh(config.mesh))
  variables, schema, _ = params_io.load_params(workdir, "best",
                                               shardings=evaluator.shardings)
  expected, columns = [], {"sparse": [], "dense": [], "domain": []}
  for batch in pipeline.ordered_batches(dataset.splits["test"], config.eval_batch_size, 0, 1):
    probs, _ = evaluator.eval_step(variables, evaluator.put(batch))
    real = batch["mask"] > 0
    expected.append(np.asarray(probs)[real])
    for k in columns:
      columns[k].append(batch[k][real])
  got = _scores(tmp_path / "p.parquet")
  np.testing.assert_allclose(_probs(got, schema.task_names), np.concatenate(expected),
                             atol=1e-6, rtol=0)
  assert got.column("domain").to_pylist() == [
      schema.domain_names[d] for d in np.concatenate(columns["domain"])]
  # The rows are encoded exactly as preparation encoded them.
  d = predict._declaration(config, [logs], {})  # pylint: disable=protected-access
  encoder = predict.new_rows_encoder(config, d, schema, None, 1 << 16)
  encoded = encoder.encode(test_rows, roles.Place(logs, 1, True))
  for k in columns:
    np.testing.assert_array_equal(encoded.inputs[k], np.concatenate(columns[k]))


def _side(path, key) -> dict:
  with open(path, newline="") as f:
    return {row[key]: row for row in csv.DictReader(f)}


def test_same_as_export(run, test_rows, tmp_path):
  workdir, _ = run
  folder = export.export_checkpoint(workdir, str(tmp_path / "export"))
  serving = json.loads(open(folder["schema"]).read())
  exported = jax.export.deserialize(bytearray(open(folder["predict"], "rb").read()))
  users, items = _side(SHIPPED / "users.csv", "user_id"), _side(SHIPPED / "items.csv", "item_id")
  rows = []
  for row in test_rows.to_pylist():
    if row["user_id"] in users and row["item_id"] in items:
      rows.append({**row, **users[row["user_id"]], **items[row["item_id"]],
                   "domain": row["scenario"]})
  assert len(rows) > 300
  probs = np.asarray(exported.call(export.encode_rows(serving, rows)))
  predict.predict_files(workdir, [_write(test_rows, tmp_path / "t.csv")],
                        str(tmp_path / "p.csv"), keys=["time", "user_id", "item_id"])
  got = _scores(tmp_path / "p.csv")
  matched = [u in users and i in items for u, i in zip(got.column("user_id").to_pylist(),
                                                       got.column("item_id").to_pylist())]
  np.testing.assert_allclose(_probs(got, serving["tasks"])[matched], probs, atol=1e-6, rtol=0)


def test_unknown_ids_get_the_oov_id(run, test_rows, tmp_path):
  workdir, config = run
  rows = test_rows.slice(0, 3)
  for column in ("user_id", "item_id", "device"):
    rows = rows.set_column(rows.schema.get_field_index(column), column,
                           pa.array([f"never-seen-{k}" for k in range(3)]))
  logs = _write(rows, tmp_path / "new.csv")
  _, schema, _ = params_io.load_params(workdir)
  d = predict._declaration(config, [logs], {})  # pylint: disable=protected-access
  encoded = predict.new_rows_encoder(config, d, schema, None, 64).encode(
      rows, roles.Place(logs, 1, True))
  at = {n: i for i, n in enumerate(schema.sparse_columns)}
  for column in ("user_id", "item_id", "device"):
    assert (encoded.inputs["sparse"][:, at[column]] == 0).all()
  assert (encoded.inputs["sparse"][:, at["domain"]] > 0).all()
  predict.predict_files(workdir, [logs], str(tmp_path / "p.csv"))
  assert _scores(tmp_path / "p.csv").num_rows == 3


def test_hashed_features_hash_as_in_training(tmp_path):
  c = files_config.get_config("hashed")
  c.data.data_dir = str(tmp_path / "tfds")
  ds = load_dataset(c.data)
  from m3oe_jax.export import read_vocabularies  # pylint: disable=g-import-not-at-top
  d = declaration.parse(c.data.files)
  encoder = new_rows.NewRows(d, ds.schema, ds.schema, read_vocabularies(c, ds.schema), 64)
  rows = pa_csv.read_csv(SHIPPED / "impressions.csv").slice(0, 2)
  rows = rows.set_column(rows.schema.get_field_index("user_id"), "user_id",
                         pa.array(["brand-new", "u1"]))
  encoded = encoder.encode(rows, roles.Place("x.csv", 1, True))
  user = encoded.inputs["sparse"][:, ds.schema.sparse_columns.index("user_id")]
  assert user.tolist() == hashing.hashed_ids(["brand-new", "u1"], 512).tolist()


def test_unknown_domain_refused_or_skipped(run, test_rows, tmp_path):
  workdir, _ = run
  rows = test_rows.slice(0, 6)
  scenario = rows.column("scenario").to_pylist()
  scenario[2] = scenario[4] = "elsewhere"
  rows = rows.set_column(rows.schema.get_field_index("scenario"), "scenario", pa.array(scenario))
  logs = _write(rows, tmp_path / "new.csv")
  with pytest.raises(RawDataError, match=r"new.csv, row 3 \(line 4\), column 'scenario': "
                     r"'elsewhere' is not a domain of the model.*--unknown_domain=skip"):
    predict.predict_files(workdir, [logs], str(tmp_path / "p.csv"))
  assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.csv.partial").exists()
  summary = predict.predict_files(workdir, [logs], str(tmp_path / "p.csv"), keys=["time"],
                                  unknown_domain="skip")
  assert summary.skipped_unknown_domain == 2 and summary.rows == 4
  assert "skipped 2 rows of an unknown domain" in summary.line()
  kept = [t for k, t in enumerate(rows.column("time").to_pylist()) if k not in (2, 4)]
  assert _scores(tmp_path / "p.csv").column("time").to_pylist() == kept


def test_missing_column_is_one_line(run, test_rows, tmp_path):
  workdir, _ = run
  logs = _write(test_rows.drop_columns(["device"]), tmp_path / "new.csv")
  with pytest.raises(RawDataError, match=r"new.csv, column 'device': missing"):
    predict.predict_files(workdir, [logs], str(tmp_path / "p.csv"))
  cli = subprocess.run([sys.executable, "-m", "m3oe_jax.predict", f"--workdir={workdir}",
                        f"--logs={logs}", f"--output={tmp_path / 'p.csv'}", "--keys=time"],
                       capture_output=True, text=True, check=False)
  assert cli.returncode == 2, cli.stderr[-2000:]
  last = cli.stderr.strip().splitlines()[-1]
  assert last.startswith("m3oe_jax.predict: error: ") and "column 'device': missing" in last
  with pytest.raises(RawDataError, match=r"column 'nope': missing"):
    predict.predict_files(workdir, [_write(test_rows, tmp_path / "t.csv")],
                          str(tmp_path / "p.csv"), keys=["nope"])


def test_output_format_by_suffix(run, test_rows, tmp_path):
  workdir, _ = run
  logs = str(tmp_path / "t.parquet")
  pq.write_table(test_rows.slice(0, 50), logs)  # Parquet logs of a CSV-declared run
  tables = {}
  for suffix in ("parquet", "csv", "tsv"):
    out = tmp_path / f"p.{suffix}"
    predict.predict_files(workdir, [logs], str(out), keys=["user_id"])
    tables[suffix] = (pq.read_table(out) if suffix == "parquet" else pa_csv.read_csv(
        out, parse_options=pa_csv.ParseOptions(delimiter="\t" if suffix == "tsv" else ",")))
  assert pq.read_schema(tmp_path / "p.parquet").field("p_click").type == pa.float32()
  for suffix in ("csv", "tsv"):
    assert tables[suffix].column_names == tables["parquet"].column_names
    assert tables[suffix].column("user_id").to_pylist() == tables["parquet"].column(
        "user_id").to_pylist()
    np.testing.assert_allclose(tables[suffix].column("p_click").to_numpy(),
                               tables["parquet"].column("p_click").to_numpy(), rtol=1e-6)
  with pytest.raises(ConfigError, match=r"--output=.*p.json: the suffix picks the format"):
    predict.predict_files(workdir, [logs], str(tmp_path / "p.json"))


def test_several_batches_give_one_batch_s_output(run, test_rows, tmp_path):
  workdir, _ = run
  logs = _write(test_rows, tmp_path / "t.csv")
  predict.predict_files(workdir, [logs], str(tmp_path / "one.parquet"), keys=["time"])
  summary = predict.predict_files(workdir, [logs, logs], str(tmp_path / "many.parquet"),
                                  keys=["time"], batch_rows=37)
  assert summary.rows == 400  # a file matched twice is read once
  one, many = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "many.parquet")
  assert one.column("time").to_pylist() == many.column("time").to_pylist()
  assert one.column("domain").to_pylist() == many.column("domain").to_pylist()
  tasks = [c[2:] for c in one.column_names if c.startswith("p_")]
  np.testing.assert_allclose(_probs(many, tasks), _probs(one, tasks), atol=1e-6, rtol=0)


def test_side_table_replaced_and_bad_flags(run, test_rows, tmp_path):
  workdir, _ = run
  logs = _write(test_rows.slice(0, 20), tmp_path / "t.csv")
  users = pa_csv.read_csv(SHIPPED / "users.csv").slice(0, 5)
  _write(users, tmp_path / "users.csv")
  summary = predict.predict_files(workdir, [logs], str(tmp_path / "p.csv"),
                                  side_tables={"users": str(tmp_path / "users.csv")})
  assert summary.unmatched_side_rows["users"] > 0
  with pytest.raises(ConfigError, match="no side table 'people'"):
    predict.predict_files(workdir, [logs], str(tmp_path / "p.csv"),
                          side_tables={"people": str(tmp_path / "users.csv")})
  with pytest.raises(ConfigError, match="'domain' is also an output column"):
    predict.predict_files(workdir, [logs], str(tmp_path / "p.csv"), keys=["domain"])
  assert predict.parse_side_tables("users=a.csv, items=b/*.csv") == {
      "users": "a.csv", "items": "b/*.csv"}
  with pytest.raises(ConfigError, match="is not NAME=GLOB"):
    predict.parse_side_tables("users")
