"""Export for serving (`m3oe_jax.export`) and parameters-only loading.

Every registered model is built with its tiny options, its variables perturbed
(so the predictions depend on every weight and BatchNorm statistic), saved as a
real checkpoint through `CheckpointStore`, exported, and then served by a fresh
Python process that imports only jax and numpy: its probabilities for batches
of 1, 7 and 1000 rows match `model.apply` in eval mode to 1e-6.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import zipfile

import jax
import numpy as np
import pytest

from configs import movielens as movielens_config
from configs import synthetic as synthetic_config
from m3oe_jax import checkpoint, export, params_io, sharding
from m3oe_jax.data import load_dataset
from m3oe_jax.models import MODELS
from m3oe_jax.trainer import Trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 7, 1000)


def _perturbed(variables, seed):
  """Variables moved by noise; variances stay positive."""
  leaves, tree = jax.tree.flatten_with_path(jax.device_get(variables))
  rng = np.random.default_rng(seed)
  out = []
  for path, leaf in leaves:
    leaf = np.asarray(leaf)
    noise = rng.normal(0, 0.3, leaf.shape).astype(leaf.dtype)
    if "var" in jax.tree_util.keystr(path):
      out.append(np.abs(leaf + noise) + 0.1)
    else:
      out.append(leaf + noise)
  return jax.tree.unflatten(tree, out)


def _saved_run(config, workdir, seed=0):
  """A checkpoint of a Trainer-built state with perturbed variables, as training saves it."""
  dataset = load_dataset(config.data, config.get("variant"))
  trainer = Trainer(config, dataset, sharding.make_mesh(config.mesh))
  state = trainer.initial_state(config.seed)
  variables = _perturbed(state.variables(), seed)
  state = state.replace(**variables)
  checkpoint.CheckpointStore(workdir).save("best", state, checkpoint.Progress(), config,
                                           dataset.schema)
  return trainer.model, variables, dataset


def _batches(schema, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for n in BATCH_SIZES:
    out[n] = {
        "sparse": np.stack([rng.integers(0, v, n) for v in schema.vocab_sizes], 1
                           ).astype(np.int32),
        "dense": rng.uniform(0, 1, (n, schema.num_dense)).astype(np.float32),
        "domain": rng.integers(0, schema.num_domains, n).astype(np.int32),
    }
  return out


# Runs in a fresh interpreter: jax and numpy only, no m3oe_jax (nor flax).
SERVE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    inputs, outputs = sys.argv[1], sys.argv[2]
    jobs = json.load(open(inputs))
    results = {}
    for name, job in jobs.items():
      exp = jax.export.deserialize(bytearray(open(job["predict"], "rb").read()))
      batches = np.load(job["batches"])
      for n in job["sizes"]:
        batch = {k: batches[f"{k}_{n}"] for k in ("sparse", "dense", "domain")}
        results[f"{name}_{n}"] = np.asarray(exp.call(batch))
    assert not any(m.split(".")[0] in ("m3oe_jax", "flax", "optax", "orbax")
                   for m in sys.modules), sorted(m for m in sys.modules if "m3oe" in m)
    np.savez(outputs, **results)
""")


def _serve(jobs: dict, tmp_path) -> dict:
  (tmp_path / "jobs.json").write_text(json.dumps(jobs))
  outputs = tmp_path / "served.npz"
  subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "jobs.json"), str(outputs)],
                 check=True, cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""},
                 timeout=300)
  return dict(np.load(outputs))


@pytest.mark.slow
def test_every_model_exports_and_serves_without_m3oe_jax(tmp_path):
  jobs, expected = {}, {}
  for name in sorted(MODELS):
    config = synthetic_config.get_config(f"tiny,model={name}")
    workdir, out = tmp_path / name / "run", tmp_path / name / "export"
    model, variables, dataset = _saved_run(config, workdir, seed=len(name))
    paths = export.export_checkpoint(str(workdir), str(out))
    serving = json.loads(pathlib.Path(paths["schema"]).read_text())
    assert serving["model"] == name and serving["ids"] == "model_ids"
    assert serving["tasks"] == list(dataset.schema.task_names)
    assert serving["domains"] == list(dataset.schema.domain_names)
    batches = _batches(dataset.schema, seed=len(name))
    np.savez(out / "batches.npz", **{f"{k}_{n}": v for n, b in batches.items()
                                     for k, v in b.items()})
    jobs[name] = {"predict": paths["predict"], "batches": str(out / "batches.npz"),
                  "sizes": list(BATCH_SIZES)}
    apply = jax.jit(lambda v, b, model=model: jax.nn.sigmoid(model.apply(v, b, train=False)[0]))
    for n, batch in batches.items():
      expected[f"{name}_{n}"] = np.asarray(
          apply(variables, {**batch, "mask": np.ones(n, np.float32)}))
  served = _serve(jobs, tmp_path)
  for key, want in expected.items():
    got = served[key]
    assert got.shape == want.shape, key
    assert np.abs(got - want).max() <= 1e-6, (key, np.abs(got - want).max())
    assert want.std() > 1e-3, key  # the predictions depend on the inputs


@pytest.mark.slow
def test_missing_checkpoint_is_one_clear_message(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "m3oe_jax.export", f"--workdir={tmp_path / 'none'}",
       f"--out={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "m3oe_jax.export: error: no best checkpoint under" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()


def _ratings(archive) -> set:
  with zipfile.ZipFile(archive) as z:
    name = next(n for n in z.namelist() if n.endswith("ratings.dat"))
    lines = z.read(name).decode().splitlines()
  return {tuple(line.split("::")[:2]) for line in lines if line}


def _exported(config, tmp_path):
  """(model, variables, dataset, the exported files, schema.json) of a short run of
  `config`, exported."""
  config.data.data_dir = str(tmp_path / "tfds")
  workdir = tmp_path / "run"
  model, variables, dataset = _saved_run(config, workdir)
  paths = export.export_checkpoint(str(workdir), str(tmp_path / "export"))
  return (model, variables, dataset, paths,
          json.loads(pathlib.Path(paths["schema"]).read_text()))


def test_raw_ids_map_through_the_vocabularies_of_prepared_data(tmp_path):
  config = movielens_config.get_config("tiny_offline")
  model, variables, dataset, paths, serving = _exported(config, tmp_path)
  assert serving["ids"] == "vocabulary" and serving["oov_id"] == 0
  features = {f["name"]: f for f in serving["sparse_features"]}
  assert [f["vocab_size"] for f in serving["sparse_features"]] == list(
      dataset.schema.vocab_sizes)
  assert serving["dense_features"][0]["name"] == "age"
  assert serving["dense_features"][0]["scaling"]["kind"] == "min_max"

  # Decoding the prepared training rows through the vocabularies gives
  # (user, movie) pairs of the raw ratings file...
  train = dataset.splits["train"].take(np.arange(len(dataset.splits["train"])))
  names = list(dataset.schema.sparse_names)
  decode = {n: {i: raw for raw, i in features[n]["vocabulary"].items()} for n in names}
  u, m = names.index("user_id"), names.index("movie_id")
  pairs = {(decode["user_id"][int(a)], decode["movie_id"][int(b)])
           for a, b in train["sparse"][:, [u, m]]}
  assert pairs <= _ratings(config.data.archive)
  # ... and raw rows encode back to the prepared ids; unseen values get the OOV id.
  raw_rows = []
  for row in range(5):
    raw = {n: decode[n][int(train["sparse"][row, j])] for j, n in enumerate(names)}
    raw["domain"] = dataset.schema.domain_names[int(train["domain"][row])]
    raw["age"] = 25
    raw_rows.append(raw)
  encoded = export.encode_rows(serving, raw_rows)
  np.testing.assert_array_equal(encoded["sparse"], train["sparse"][:5])
  np.testing.assert_array_equal(encoded["domain"], train["domain"][:5])
  unseen = dict(raw_rows[0], user_id="999999999", zip="no-such-zip", movie_id=-3)
  encoded = export.encode_rows(serving, [unseen])
  assert encoded["sparse"][0, u] == 0 and encoded["sparse"][0, m] == 0
  assert encoded["sparse"][0, names.index("zip")] == 0
  # The exported function scores encoded raw rows like the model does.
  exp = jax.export.deserialize(bytearray(pathlib.Path(paths["predict"]).read_bytes()))
  batch = export.encode_rows(serving, raw_rows + [unseen])
  want = jax.nn.sigmoid(model.apply(variables, {**batch, "mask": np.ones(6, np.float32)})[0])
  np.testing.assert_allclose(np.asarray(exp.call(batch)), np.asarray(want), atol=1e-6)


@pytest.mark.slow
def test_load_params_reads_about_the_parameters_bytes(tmp_path):
  """Peak host memory of a load scales with the variables' bytes, not with the
  whole train state's (3x: both Adam moments); see benchmarks/bench_load_params.py."""
  bench = [sys.executable, str(REPO / "benchmarks" / "bench_load_params.py"),
           f"--workdir={tmp_path}", "--rows=400000"]
  result = subprocess.run(bench, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  params = report["variable_bytes"]
  assert report["state_bytes"] > 2.5 * params
  # Measured: 1.13-1.14x the variables (the arrays, orbax's metadata, one 1 MiB
  # piece of compressed bytes at a time), against 2.07x for orbax's restore of
  # the same arrays and 6x for the whole state (2 x its 3x).
  assert report["load_params_peak_bytes"] < 1.3 * params, report
  assert report["orbax_partial_peak_bytes"] > 1.5 * report["load_params_peak_bytes"], report
  assert report["full_restore_peak_bytes"] > 4 * report["load_params_peak_bytes"], report


# Saves, on a 4x2 mesh of simulated devices, arrays laid out every way a train
# state's can be, in a checkpoint shaped like CheckpointStore's, and the same
# values as .npy files to compare with.
SAVE_ON_A_MESH = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import orbax.checkpoint as ocp
    from etils import epath
    from jax.sharding import NamedSharding, PartitionSpec as P
    workdir, schema = epath.Path(sys.argv[1]), json.loads(sys.argv[2])
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
    def put(x, *spec):
      return jax.device_put(x, NamedSharding(mesh, P(*spec)))
    state = {
        "params": {
            "rows": put(normal(4096, 16), "data"),
            "rows_cols": put(normal(64, 10), "data", "model"),
            "cols": put(normal(24, 6), None, "model"),
            "whole": put(normal(300, 7)),
            "zeros": put(np.zeros((64, 8), np.float32), "data"),
            "scalar": put(np.float32(3.5)),
            "ints": put(np.arange(40, dtype=np.int8), "model"),
            "flags": put(rng.random(12) < 0.5),
            "half": put(normal(8, 8).astype(jnp.bfloat16)),
        },
        "batch_stats": {"mean": put(normal(32), "model")},
        "opt_state": {"mu": put(normal(4096, 16), "data")},
    }
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    mngr = ocp.CheckpointManager(
        workdir / "checkpoints" / "best", item_handlers=handlers,
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False))
    mngr.save(7, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({"config": {"seed": 3}, "schema": schema})))
    mngr.wait_until_finished()
    for path, leaf in jax.tree.flatten_with_path(state)[0]:
      name = ".".join(k.key for k in path)
      np.save(workdir / f"{name}.npy", np.asarray(leaf.astype(jnp.float32)
                                                  if leaf.dtype == jnp.bfloat16 else leaf))
""")


def test_load_params_reads_every_layout_exactly(tmp_path, monkeypatch):
  """Arrays written on a mesh in chunks of whole rows, of rows and columns, of
  columns, in one chunk, 0-d, of several dtypes, come back exactly onto one
  device: streamed, except bfloat16, which tensorstore reads whole (and every
  array when streaming is turned off)."""
  from tests.helpers import cpu_env  # pylint: disable=g-import-not-at-top
  schema = {"sparse_names": ["a"], "vocab_sizes": [5], "dense_names": [],
            "domain_names": ["d0"], "task_names": ["click"]}
  subprocess.run([sys.executable, "-c", SAVE_ON_A_MESH, str(tmp_path), json.dumps(schema)],
                 check=True, cwd=REPO, env=cpu_env(8), timeout=300)
  streamed = []
  stream = params_io._stream_array  # pylint: disable=protected-access

  def counted(store):
    out = stream(store)
    if out is not None:
      streamed.append(store.kvstore.path.rstrip("/"))
    return out

  monkeypatch.setattr(params_io, "_stream_array", counted)
  device = jax.local_devices()[0]
  everything = {"params.rows", "params.rows_cols", "params.cols", "params.whole",
                "params.zeros", "params.scalar", "params.ints", "params.flags",
                "batch_stats.mean"}
  for streaming, want_streamed in ((True, everything), (False, set())):
    if not streaming:
      monkeypatch.setattr(params_io, "_stream_array", lambda store: None)
    streamed.clear()
    variables, loaded_schema, config = params_io.load_params(tmp_path, "best", step=7)
    assert config.seed == 3 and loaded_schema.task_names == ("click",)
    assert set(variables) == {"params", "batch_stats"}
    for path, leaf in jax.tree.flatten_with_path(variables)[0]:
      name = ".".join(k.key for k in path)
      want = np.load(tmp_path / f"{name}.npy")
      assert leaf.devices() == {device}, name
      got = np.asarray(leaf.astype(np.float32) if leaf.dtype == jax.numpy.bfloat16 else leaf)
      assert got.dtype == want.dtype and got.shape == want.shape, name
      np.testing.assert_array_equal(got, want, err_msg=name)
    assert set(streamed) == want_streamed, streaming


def test_stream_array_fills_edge_chunks_and_hands_other_layouts_to_tensorstore():
  """Chunks that overhang the array's end or split its rows are cut to fit;
  Fortran order and big-endian data (which the streaming reader does not lay
  out) give None, for tensorstore to read."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  data = rng.normal(size=(20, 8))
  for chunks, order, dtype, streams in (([7, 3], "C", "<f4", True), ([7, 8], "C", "<f4", True),
                                        ([20, 8], "C", "<i4", True), ([7, 8], "F", "<f4", False),
                                        ([7, 8], "C", ">f4", False)):
    want = (data * 1e6).astype(np.dtype(dtype).newbyteorder("="))
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "memory"}, "create": True,
                     "metadata": {"shape": [20, 8], "chunks": chunks, "dtype": dtype,
                                  "order": order, "compressor": {"id": "zstd"}}}).result()
    store.write(want).result()
    got = params_io._stream_array(store)  # pylint: disable=protected-access
    if not streams:
      assert got is None, (chunks, order, dtype)
      continue
    np.testing.assert_array_equal(got, want)
    assert got.ctypes.data % 64 == 0 and not got.flags.writeable
    assert jax.device_put(got, jax.devices("cpu")[0], may_alias=True).unsafe_buffer_pointer() == (
        got.ctypes.data)


def test_files_dataset_raw_rows_encode_as_prepared(tmp_path):
  """Hashed, train-vocabulary, multi-valued and scaled dense features of the
  files dataset: raw rows (joined with their side tables by hand) encode
  through schema.json to the prepared rows."""
  import pyarrow.csv as pa_csv  # pylint: disable=g-import-not-at-top
  from configs import files as files_config  # pylint: disable=g-import-not-at-top
  _, _, dataset, _, serving = _exported(files_config.get_config("hashed"), tmp_path)
  features = {f["name"]: f for f in serving["sparse_features"]}
  assert features["user_id"]["mode"] == "hash" and features["user_id"]["vocabulary"] is None
  assert features["tags"]["width"] == 4 and features["tags"]["separator"] == "|"
  assert serving["inputs"]["sparse"]["shape"][1] == dataset.schema.sparse_width
  folder = files_config.TESTDATA
  logs = pa_csv.read_csv(folder / "impressions.csv").slice(0, 8).to_pylist()
  users = {r["user_id"]: r for r in pa_csv.read_csv(folder / "users.csv").to_pylist()}
  items = {r["item_id"]: r for r in pa_csv.read_csv(folder / "items.csv").to_pylist()}
  rows = []
  for r in logs:
    row = {**r, **items[r["item_id"]], "domain": r["scenario"]}
    user = users.get(r["user_id"], {"age": None, "gender": "", "city": "",
                                    "interests": ""})
    row.update({k: v for k, v in user.items() if k != "user_id"})
    rows.append(row)
  train = dataset.splits["train"].take(np.arange(8))
  known = [i for i, r in enumerate(rows) if r["age"] is not None]
  rows = [rows[i] for i in known]
  encoded = export.encode_rows(serving, rows)
  np.testing.assert_array_equal(encoded["sparse"], train["sparse"][known])
  np.testing.assert_array_equal(encoded["domain"], train["domain"][known])
  np.testing.assert_allclose(encoded["dense"], train["dense"][known], rtol=1e-5, atol=1e-6)
