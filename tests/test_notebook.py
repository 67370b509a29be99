"""notebooks/evaluate_checkpoint: the .ipynb matches its jupytext source, and it runs
end to end (every cell, no error) on two tiny MovieLens-format runs (real
vocabularies), one of them compared with the other."""

import json
import os
import pathlib
import re
import sys

import pytest

from configs import movielens as movielens_config

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = REPO / "notebooks" / "evaluate_checkpoint.py"
NOTEBOOK = REPO / "notebooks" / "evaluate_checkpoint.ipynb"

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")


def _cells(notebook):
  return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def test_ipynb_is_in_sync_with_its_jupytext_source():
  from_source = jupytext.read(SOURCE)
  stored = nbformat.read(NOTEBOOK, as_version=4)
  assert _cells(stored) == _cells(from_source), (
      "notebooks/evaluate_checkpoint.ipynb is out of date; regenerate it with "
      "`jupytext --to ipynb notebooks/evaluate_checkpoint.py`")
  assert not any(c.get("outputs") for c in stored.cells if c.cell_type == "code"), (
      "commit the notebook without outputs")


def _kernel(tmp_path) -> str:
  """A kernelspec running this interpreter (no user-level install needed)."""
  spec = tmp_path / "jupyter" / "kernels" / "m3oe-test"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "m3oe test", "language": "python"}))
  return str(tmp_path / "jupyter")


@pytest.mark.slow
def test_notebook_runs_end_to_end_on_two_tiny_runs(tmp_path, monkeypatch):
  nbclient = pytest.importorskip("nbclient")
  from m3oe_jax import train
  runs = {}
  for seed, epochs in ((0, 2), (1, 1)):
    config = movielens_config.get_config("tiny_offline")
    config.data.data_dir = str(tmp_path / "tfds")
    config.seed = seed
    config.num_epochs = epochs
    runs[seed] = tmp_path / f"run{seed}"
    train.train_and_evaluate(config, str(runs[seed]))
  monkeypatch.setenv("M3OE_NOTEBOOK_WORKDIR", str(runs[0]))
  monkeypatch.setenv("M3OE_NOTEBOOK_COMPARE_WORKDIR", str(runs[1]))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("JUPYTER_PATH", _kernel(tmp_path))
  notebook = jupytext.read(SOURCE)
  client = nbclient.NotebookClient(notebook, kernel_name="m3oe-test", timeout=600,
                                   resources={"metadata": {"path": str(REPO)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  text = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")
  assert "mean over pairs" in text  # the metrics table
  assert "fusion weights:" in text  # M3oE's diagnostics
  assert "other AUC" in text  # the comparison
  assert "ids: vocabulary | OOV id: 0" in text
  # unseen raw values map to the OOV id 0 (the sparse 'domain' feature takes the row's domain)
  assert re.search(r"-> ids \[0, 0, 0, 0, 0, 0, [1-3]\]", text), text[-2000:]
  errors = [o for c in notebook.cells for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  assert os.environ["M3OE_NOTEBOOK_WORKDIR"] == str(runs[0])
