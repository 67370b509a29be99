"""Preparing without a network or with an explicit source: a download that
cannot succeed fails at once, nothing is left in the temp folder, and an
explicit `extracted_dir` is honoured by the `:tiny_offline` variants."""

import dataclasses
import logging
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import ml_collections
import pytest

from m3oe_jax.data import fake_raw, prepared
from m3oe_jax.data.datasets import movielens
from m3oe_jax.data.raw import RawSourceNotFoundError, sources
from m3oe_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[2]
OFFLINE_URL = "https://m3oe-offline-test.invalid/ml-1m.zip"


def data_config(data_dir, **kw):
  c = ml_collections.ConfigDict(dict(name="movielens", data_dir=str(data_dir),
                                     placement="host"))
  for k, v in kw.items():
    c[k] = v
  return c


PROXY_VARIABLES = [v for name in ("http_proxy", "https_proxy", "all_proxy")
                   for v in (name, name.upper())]


@pytest.fixture(autouse=True)
def direct_connections(monkeypatch):
  """Downloads go straight to the server (a proxy would be probed instead)."""
  for name in PROXY_VARIABLES:
    monkeypatch.delenv(name, raising=False)


class TfdsDownloadReached(Exception):
  pass


@pytest.fixture
def offline_spec(monkeypatch):
  """The MovieLens archive at a host that never resolves; TFDS's download (and its
  retries) raises TfdsDownloadReached instead of running."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  spec = dataclasses.replace(movielens.ARCHIVE, url=OFFLINE_URL)
  monkeypatch.setattr(movielens.M3oeMovielens1m, "archive_spec", lambda self: spec)

  def download(self, url):
    raise TfdsDownloadReached(url)

  monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
  return spec


def test_a_name_that_does_not_resolve_fails_at_once(offline_spec, tmp_path):
  start = time.monotonic()
  with pytest.raises(RawSourceNotFoundError) as info:
    prepared.load(data_config(tmp_path / "tfds"))
  assert time.monotonic() - start < 10
  message = str(info.value)
  assert "\n" not in message
  assert "the name m3oe-offline-test.invalid does not resolve" in message
  assert f"Download {OFFLINE_URL} ({movielens.ARCHIVE.checksum}" in message
  assert "set config.data.extracted_dir" in message


def test_a_refused_connection_fails_at_once(offline_spec, monkeypatch, tmp_path):
  with socket.socket() as s:  # a port nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  spec = dataclasses.replace(offline_spec, url=f"http://127.0.0.1:{port}/ml-1m.zip")
  monkeypatch.setattr(movielens.M3oeMovielens1m, "archive_spec", lambda self: spec)
  with pytest.raises(RawSourceNotFoundError,
                     match=rf"127\.0\.0\.1:{port} cannot be reached .*refused.*Download "):
    prepared.load(data_config(tmp_path / "tfds"))


@pytest.mark.parametrize("failure", ["timeout", "resolver_busy_once"])
def test_transient_failures_are_left_to_the_retrying_download(failure, offline_spec,
                                                              monkeypatch, tmp_path):
  real_getaddrinfo = socket.getaddrinfo
  calls = []

  def getaddrinfo(host, *args, **kwargs):
    calls.append(host)
    if failure == "resolver_busy_once" and len(calls) == 1:
      raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    return real_getaddrinfo("127.0.0.1", *args, **kwargs)

  def connect(self, address):
    if failure == "timeout":
      raise socket.timeout("timed out")

  monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
  monkeypatch.setattr(socket.socket, "connect", connect)
  monkeypatch.setattr(sources, "RESOLVE_AGAIN_WAIT_S", 0.0)
  with pytest.raises(RawSourceNotFoundError, match="TfdsDownloadReached"):
    prepared.load(data_config(tmp_path / "tfds"))
  assert calls[0] == "m3oe-offline-test.invalid"


def test_a_resolver_that_stays_busy_fails_after_one_retry(monkeypatch):
  calls = []

  def getaddrinfo(*args, **kwargs):
    calls.append(args)
    raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

  monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
  monkeypatch.setattr(sources, "RESOLVE_AGAIN_WAIT_S", 0.0)
  with pytest.raises(sources.UnreachableError, match="Temporary failure"):
    sources.check_reachable(OFFLINE_URL)
  assert len(calls) == 2


def test_an_unreachable_proxy_is_named(monkeypatch):
  monkeypatch.setenv("HTTPS_PROXY", "http://m3oe-proxy.invalid:3128")
  monkeypatch.delenv("NO_PROXY", raising=False)
  monkeypatch.delenv("no_proxy", raising=False)
  with pytest.raises(sources.UnreachableError,
                     match=r"m3oe-proxy\.invalid \(the proxy for https://m3oe-offline-test"):
    sources.check_reachable(OFFLINE_URL)


CHILD = """
import dataclasses, runpy, sys
from m3oe_jax.data.datasets import kuairand
spec = kuairand.ARCHIVES["pure"]
kuairand.ARCHIVES["pure"] = dataclasses.replace(
    spec, url="https://m3oe-offline-test.invalid/" + spec.filename)
sys.argv = ["m3oe_jax.train"] + sys.argv[1:]
runpy.run_module("m3oe_jax.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_train_offline_prints_the_instruction_within_seconds(tmp_path):
  """`python -m m3oe_jax.train --config=configs/kuairand.py` offline, with only the
  archive's host changed to one that never resolves."""
  start = time.monotonic()
  proc = subprocess.run(
      [sys.executable, "-c", CHILD, "--config=configs/kuairand.py",
       f"--config.data.data_dir={tmp_path}/tfds", f"--workdir={tmp_path}/w"],
      cwd=REPO, env={**{k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES},
                     "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
      capture_output=True, text=True, timeout=200)
  elapsed = time.monotonic() - start
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("m3oe_jax.train: error: downloading https://m3oe-offline-test"
                         ".invalid/KuaiRand-Pure.tar.gz failed (UnreachableError: the "
                         "name m3oe-offline-test.invalid does not resolve"), last
  assert "Download https://m3oe-offline-test.invalid/KuaiRand-Pure.tar.gz (md5:" in last
  assert elapsed < 60, elapsed  # mostly imports; TFDS's retries took 206 s


def test_preparing_leaves_nothing_in_the_temp_folder(tmp_path, monkeypatch):
  top = fake_raw.write_movielens(tmp_path / "raw", num_ratings=300, num_users=40,
                                 num_movies=50, seed=11)
  temp = tmp_path / "temp"
  temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  cfg = data_config(tmp_path / "tfds", extracted_dir=str(top), download=False)
  prepared.load(cfg)
  prepared.load(cfg)
  assert sorted(p.name for p in temp.iterdir()) == []


@pytest.mark.parametrize("dataset", ["kuairand", "movielens"])
def test_tiny_offline_reads_an_explicit_extracted_dir(dataset, tmp_path, caplog):
  """As the default variant would (same data settings, no bundled checksum), with
  the tiny variant's model and training."""
  from configs import kuairand as kuairand_config  # pylint: disable=g-import-not-at-top
  from configs import movielens as movielens_config  # pylint: disable=g-import-not-at-top
  module = {"kuairand": kuairand_config, "movielens": movielens_config}[dataset]
  if dataset == "kuairand":
    top = fake_raw.write_kuairand(tmp_path / "raw", num_rows=300, num_users=30,
                                  num_videos=60, seed=11)
  else:
    top = fake_raw.write_movielens(tmp_path / "raw", num_ratings=300, num_users=40,
                                   num_movies=50, seed=11)
  configs = {}
  for variant in ("tiny_offline", "default"):
    configs[variant] = module.get_config(variant).data
    configs[variant].data_dir = str(tmp_path / "tfds")
    configs[variant].extracted_dir = str(top)
  with caplog.at_level(logging.WARNING):
    ds = prepared.load(configs["tiny_offline"])
  assert "replaces the bundled tiny archive" in caplog.text
  assert ds.schema.source["kind"] == "extracted"
  assert ds.schema.source["settings"]["checksum"] == ""  # not the bundled archive's
  path = prepared.make_builder(configs["tiny_offline"]).data_path
  assert path == prepared.make_builder(configs["default"]).data_path
  configs["tiny_offline"].extracted_dir = ""
  assert path != prepared.make_builder(configs["tiny_offline"]).data_path


def test_an_archive_and_an_extracted_dir_are_refused_together(tmp_path):
  cfg = data_config(tmp_path / "tfds", archive=str(tmp_path / "ml-1m.zip"),
                    extracted_dir=str(tmp_path / "ml-1m"))
  with pytest.raises(ConfigError, match=r"config\.data\.archive=.* and "
                     r"config\.data\.extracted_dir=.* are both set"):
    prepared.load(cfg)
  assert not (tmp_path / "tfds").exists()
