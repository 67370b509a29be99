"""The package as a user installs it: a wheel (not the checkout) carries the
configs and the tiny archives, and the documented command works outside the
checkout."""

import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

from m3oe_jax import cli
from tests.helpers import REPO

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
ENV.pop("PYTHONPATH", None)


def test_a_config_named_under_configs_resolves_to_the_packaged_copy(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.config_path("configs/synthetic.py") == str(cli.PACKAGED_CONFIGS / "synthetic.py")
  assert cli.config_path("configs/sweeps/table2.py").endswith("m3oe_jax/configs/sweeps/table2.py")
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "synthetic.py").write_text("# the user's own\n")
  assert cli.config_path("configs/synthetic.py") == "configs/synthetic.py"
  assert cli.config_path("configs/none.py") == "configs/none.py"
  assert cli.config_path("elsewhere/synthetic.py") == "elsewhere/synthetic.py"


@pytest.mark.slow
def test_a_wheel_trains_the_tiny_offline_config_outside_the_checkout(tmp_path):
  built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                          str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True,
                         timeout=600)
  assert built.returncode == 0, built.stderr
  [wheel] = (tmp_path / "dist").glob("m3oe_jax-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  for shipped in ("m3oe_jax/configs/movielens.py", "m3oe_jax/configs/sweeps/table2.py",
                  "m3oe_jax/data/testdata/ml-1m-tiny.zip",
                  "m3oe_jax/data/testdata/KuaiRand-Pure-tiny.tar.gz",
                  "m3oe_jax/configs/files.py", "m3oe_jax/data/testdata/files/impressions.csv",
                  "m3oe_jax/data/testdata/files/users.csv",
                  "m3oe_jax/data/testdata/files/items.csv"):
    assert shipped in names, shipped

  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  installed = subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=600)
  assert installed.returncode == 0, installed.stderr
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  where = subprocess.run([python, "-c", "import m3oe_jax; print(m3oe_jax.__file__)"],
                         cwd=outside, env=ENV, capture_output=True, text=True)
  assert pathlib.Path(where.stdout.strip()).is_relative_to(venv), where.stdout
  trained = subprocess.run(
      [python, "-m", "m3oe_jax.train", "--config=configs/movielens.py:tiny_offline",
       "--workdir=run", f"--config.data.data_dir={tmp_path / 'data'}", "--config.num_epochs=1"],
      cwd=outside, env=ENV, capture_output=True, text=True, timeout=600)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert (outside / "run" / "metrics.json").exists()
  prepared = subprocess.run(
      [python, "-m", "m3oe_jax.data.prepared", "--config=configs/files.py", "--verify",
       f"--config.data.data_dir={tmp_path / 'data'}"],
      cwd=outside, env=ENV, capture_output=True, text=True, timeout=600)
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  assert "CRC-32 match" in prepared.stdout
