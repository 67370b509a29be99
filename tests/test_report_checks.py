"""The report counts only a run's own results: a metrics.json copied from another
run's folder is rejected, a corrupt one is left out, and neither stops the report.

Fast: the runs are folders written by hand (tests.helpers' sweeps), the
checkpoints a `meta/metadata` JSON file as orbax writes it.
"""

import io
import json
import shutil

import pytest

from m3oe_jax import run_identity
from m3oe_jax import sweep as sweep_lib
from m3oe_jax.report import collect, report, tables
from tests.helpers import SWEEP_CONFIG, m3oe_auc, make_sweep, mtl_auc, write_sweep_run


def _runs(root):
  runs, _ = collect.collect([root])
  return {r.name: r for r in runs}


def _report(root, out, capsys):
  """`python -m m3oe_jax.report` in this process: (exit status, report.md, stderr)."""
  status = report.main([f"--workdir={root}", f"--out={out}"])
  captured = capsys.readouterr()
  md = (out / "report.md").read_text() if status == 0 else ""
  return status, md, captured.err


def _config(model, seed, domains=(), tasks=(), lr=0.01):
  """A config as a checkpoint stores it (only the fields the checks read, and one more)."""
  return {"model": {"name": model, model: {"dims": [8]}}, "seed": seed,
          "variant": {"domains": list(domains), "tasks": list(tasks)},
          "optimizer": {"model_lr": lr}, "num_epochs": 3}


def _checkpoint(workdir, config, step=10):
  meta = workdir / "checkpoints" / "latest" / str(step) / "meta"
  meta.mkdir(parents=True)
  (meta / "metadata").write_text(json.dumps({"progress": {}, "config": config}))


def _set_hash(workdir, config_hash):
  path = workdir / "metrics.json"
  path.write_text(json.dumps({**json.loads(path.read_text()), "config_hash": config_hash}))


def _sweep_hashes(root, hashes):
  """Records `hashes` ({run name: hash}) in sweep.json and in each run's metrics.json."""
  record = json.loads((root / "sweep.json").read_text())
  for r in record["runs"]:
    if r["name"] in hashes:
      r["config_hash"] = hashes[r["name"]]
      _set_hash(root / r["workdir"], hashes[r["name"]])
  (root / "sweep.json").write_text(json.dumps(record))


def test_metrics_of_another_seed_are_left_out_and_named(tmp_path, capsys):
  make_sweep(tmp_path)
  # Seed 2023's M3oE result copied over seed 2022's: the cell of seed 2023 counted twice.
  shutil.copy(tmp_path / "m3oe-mdmt/all/seed2023/metrics.json",
              tmp_path / "m3oe-mdmt/all/seed2022/metrics.json")
  runs = _runs(tmp_path)
  run = runs["m3oe-mdmt/all/seed2022"]
  assert run.status == "rejected" and run.metrics is None
  assert "seed 2023" in run.error and "2022" in run.error
  assert runs["m3oe-mdmt/all/seed2023"].status == "finished"
  m3oe = next(r for r in tables.build_table(list(runs.values())).rows if r.model == "m3oe")
  cell = m3oe.cells["age_1_18/click"]
  assert cell.values == pytest.approx([m3oe_auc(0, 0, s) for s in (2023, 2024)])
  assert m3oe.complete_seeds == [2023, 2024]

  status, md, err = _report(tmp_path, tmp_path / "out", capsys)
  assert status == 0
  path = tmp_path / "m3oe-mdmt/all/seed2022/metrics.json"
  assert f"m3oe_jax.report: warning: {path}: it is another run's: it has seed 2023" in err
  assert "| m3oe-mdmt/all/seed2022 | rejected |" in md and f"- {path}: " in md
  assert "MMoE-MTL" in md  # the rest is reported
  counts = json.loads((tmp_path / "out" / "report.json").read_text())["runs"]
  assert counts["rejected"] == 1 and counts["finished"] == 14


def test_metrics_of_another_model_are_left_out_and_named(tmp_path, capsys):
  make_sweep(tmp_path)
  record = json.loads((tmp_path / "sweep.json").read_text())
  star = write_sweep_run(tmp_path, "star-mdmt/all/seed2022", "star", "mdmt", (), (), 2022,
                         mtl_auc)
  record["runs"].append(star)
  (tmp_path / "sweep.json").write_text(json.dumps(record))
  # STAR built from M3oE's numbers.
  shutil.copy(tmp_path / "m3oe-mdmt/all/seed2022/metrics.json",
              tmp_path / "star-mdmt/all/seed2022/metrics.json")
  run = _runs(tmp_path)["star-mdmt/all/seed2022"]
  assert run.status == "rejected"
  assert "model 'm3oe'" in run.error and "'star'" in run.error
  status, md, err = _report(tmp_path, tmp_path / "out", capsys)
  assert status == 0 and "star-mdmt/all/seed2022/metrics.json: it is another run's" in err
  star_line = next(line for line in md.splitlines() if line.startswith("| STAR-MDMT"))
  assert "0/1" in star_line and "n/a" in star_line


def test_the_config_hash_tells_runs_of_the_same_model_and_seed_apart(tmp_path, capsys):
  make_sweep(tmp_path)
  names = [f"mmoe-mtl/d{d}/seed{s}" for d in range(3) for s in (2022, 2023, 2024)]
  _sweep_hashes(tmp_path, {n: f"{i:064x}" for i, n in enumerate(names)})
  # Domain 0's run copied over domain 1's: same model, seed and number of domains.
  shutil.copy(tmp_path / "mmoe-mtl/d0/seed2022/metrics.json",
              tmp_path / "mmoe-mtl/d1/seed2022/metrics.json")
  runs = _runs(tmp_path)
  run = runs["mmoe-mtl/d1/seed2022"]
  assert run.status == "rejected" and "config hash" in run.error
  assert runs["mmoe-mtl/d0/seed2022"].status == "finished"
  assert runs["mmoe-mtl/d0/seed2022"].unverified is None
  status, md, err = _report(tmp_path, tmp_path / "out", capsys)
  assert status == 0 and "mmoe-mtl/d1/seed2022/metrics.json: it is another run's" in err
  # Files without a hash are reported, and said to be unverified.
  assert "run(s) not verified: its metrics.json has no config hash" in err
  assert "mmoe-mtl/d0/seed2022" not in err.split("not verified")[1]
  lines = (tmp_path / "out" / "runs.csv").read_text().splitlines()
  assert lines[0].endswith(",verified")
  verified = {line.split(",")[0]: line.split(",")[-1] for line in lines[1:]}
  assert verified["mmoe-mtl/d0/seed2022"] == "yes"
  assert verified["m3oe-mdmt/all/seed2022"] == "no"
  assert verified["mmoe-mtl/d1/seed2022"] == ""


def test_runs_outside_a_sweep_are_checked_against_their_checkpoints(tmp_path):
  configs = {"a": _config("m3oe", 2022), "b": _config("m3oe", 2023),
             "c": _config("mmoe", 2022, domains=(1,)), "d": _config("m3oe", 2024)}
  write_sweep_run(tmp_path, "a", "m3oe", "mdmt", (), (), 2022, m3oe_auc)
  write_sweep_run(tmp_path, "b", "m3oe", "mdmt", (), (), 2022, m3oe_auc)  # written as seed 2022
  write_sweep_run(tmp_path, "c", "mmoe", "mtl", (1,), (), 2022, mtl_auc)
  write_sweep_run(tmp_path, "d", "m3oe", "mdmt", (), (), 2024, m3oe_auc)
  write_sweep_run(tmp_path, "e", "m3oe", "mdmt", (), (), 2025, m3oe_auc)  # no checkpoint
  for name, config in configs.items():
    _checkpoint(tmp_path / name, config)
    _set_hash(tmp_path / name, run_identity.config_hash(config))
  _set_hash(tmp_path / "e", run_identity.config_hash(_config("m3oe", 2025)))
  # d: same model and seed as its checkpoints, but another learning rate.
  _set_hash(tmp_path / "d", run_identity.config_hash(_config("m3oe", 2024, lr=0.1)))
  runs = _runs(tmp_path)
  assert {n: r.status for n, r in runs.items()} == {
      "a": "finished", "b": "rejected", "c": "finished", "d": "rejected", "e": "finished"}
  assert runs["a"].unverified is None and runs["c"].unverified is None
  assert "seed 2022" in runs["b"].error and "the run's checkpoints" in runs["b"].error
  assert "config hash" in runs["d"].error
  assert "no checkpoint in the folder" in runs["e"].unverified
  # A rejected run keeps what its checkpoints say it is.
  assert (runs["b"].model, runs["b"].kind, runs["b"].seed) == ("m3oe", "mdmt", 2023)
  assert (runs["c"].model, runs["c"].kind) == ("mmoe", "mtl")


def test_old_metrics_without_a_hash_are_checked_by_model_and_seed(tmp_path):
  write_sweep_run(tmp_path, "mine", "m3oe", "mdmt", (), (), 2022, m3oe_auc)
  write_sweep_run(tmp_path, "copied", "mmoe", "mdmt", (), (), 2022, mtl_auc)
  _checkpoint(tmp_path / "mine", _config("m3oe", 2022))
  _checkpoint(tmp_path / "copied", _config("m3oe", 2022))
  runs = _runs(tmp_path)
  assert runs["mine"].status == "finished"
  assert runs["mine"].unverified.startswith("its metrics.json has no config hash")
  assert "model and seed match the run's checkpoints" in runs["mine"].unverified
  assert runs["copied"].status == "rejected" and "model 'mmoe'" in runs["copied"].error


@pytest.mark.parametrize("text,why", [
    ("{\"test\": {", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ("{\"model\": \"mmoe\", \"seed\": 2022}", "no 'test', 'domains', 'tasks'"),
    (None, "has no numbers 'auc', 'logloss' and 'count'"),
])
def test_a_corrupt_metrics_json_is_named_and_the_rest_reported(text, why, tmp_path, capsys):
  make_sweep(tmp_path)
  path = tmp_path / "mmoe-mtl/d2/seed2024/metrics.json"
  if text is None:
    metrics = json.loads(path.read_text())
    metrics["test"]["pairs"]["age_35_45_50_56/click"]["auc"] = "high"
    text = json.dumps(metrics)
  path.write_text(text)
  run = _runs(tmp_path)["mmoe-mtl/d2/seed2024"]
  assert run.status == "invalid" and why in run.error
  status, md, err = _report(tmp_path, tmp_path / "out", capsys)
  assert status == 0
  assert f"m3oe_jax.report: warning: {path}: " in err and why in err
  assert "| mmoe-mtl/d2/seed2024 | invalid |" in md
  result = json.loads((tmp_path / "out" / "report.json").read_text())
  mtl = next(r for r in result["table"]["rows"] if r["name"] == "MMoE-MTL")
  assert mtl["complete_seeds"] == [2022, 2023]
  assert len(mtl["auc"]["age_35_45_50_56/click"]["values"]) == 2
  assert len(mtl["auc"]["age_1_18/click"]["values"]) == 3


def test_a_metrics_jsonl_line_of_the_wrong_shape_is_skipped_and_noted(tmp_path, capsys):
  make_sweep(tmp_path)
  path = tmp_path / "m3oe-mdmt/all/seed2022/metrics.jsonl"
  good = path.read_text().splitlines()
  bad = ["[1, 2]", "{\"step\": 3}", "{\"epoch\": \"2\"}", "{\"epoch\": 2, \"validation\": 5}",
         "{\"epoch\": true}", "{\"epoch\": 3, \"validation\": {\"pairs\": {}}, "
         "\"diagnostics\": {\"fusion_weights\": [1]}}"]
  path.write_text("\n".join(good[:1] + bad + good[1:]) + "\n{\"epoch\": 4, \"vali")
  run = _runs(tmp_path)["m3oe-mdmt/all/seed2022"]
  assert [r["epoch"] for r in run.epochs()] == [0, 1]
  assert len(run.notes) == 1 and "skipped 6 line(s)" in run.notes[0]
  assert "line 2: not a JSON object" in run.notes[0]
  status, md, err = _report(tmp_path, tmp_path / "out", capsys)
  assert status == 0 and f"{path}: skipped 6 line(s)" in err
  assert (tmp_path / "out" / "plots" / "validation_auc.png").exists()


def test_the_config_hash_survives_what_a_resumption_may_change():
  sweep = sweep_lib.load_config_file(SWEEP_CONFIG, "tiny")
  run = next(r for r in sweep_lib.expand(sweep) if r.name == "mmoe-mtl/d2/seed2023")
  config = sweep_lib.run_config(sweep, run)
  base = run_identity.config_hash(config)
  assert run_identity.config_hash(json.loads(config.to_json_best_effort())) == base
  for field, value in (("num_epochs", 99), ("mesh.data", 2), ("steps_per_call", 4),
                       ("compilation_cache_dir", "/elsewhere"),
                       ("model.m3oe.num_shared_experts", 9)):
    changed = sweep_lib.run_config(sweep, run)
    sweep_lib.apply_override(changed, field, value)
    assert run_identity.config_hash(changed) == base, field
  saved = json.loads(config.to_json_best_effort())
  del saved["model"]["dtype"]  # a checkpoint from before the field existed
  saved["batch_size"] = float(saved["batch_size"])
  saved["data"]["cache_dir"] = "/moved"
  assert run_identity.config_hash(saved) == base
  for field, value in (("seed", 2024), ("variant.domains", (1,)), ("model.mmoe.num_experts", 9),
                       ("optimizer.model_lr", 0.5)):
    changed = sweep_lib.run_config(sweep, run)
    sweep_lib.apply_override(changed, field, value)
    assert run_identity.config_hash(changed) != base, field


def test_sweep_json_records_each_runs_config_hash(tmp_path):
  sweep = sweep_lib.load_config_file(SWEEP_CONFIG, "tiny,seeds=1")
  runs = sweep_lib.expand(sweep)
  sweep_lib.dry_run(sweep, str(tmp_path), "local", out=io.StringIO())
  records = json.loads((tmp_path / "sweep.json").read_text())["runs"]
  hashes = [r["config_hash"] for r in records]
  assert hashes == [run_identity.config_hash(sweep_lib.run_config(sweep, r)) for r in runs]
  assert len(set(hashes)) == len(hashes)
  # A finished run keeps the hash recorded when it ran, whatever the sweep's config now.
  (tmp_path / runs[0].name).mkdir(parents=True)
  (tmp_path / runs[0].name / "metrics.json").write_text("{}")
  records[0]["config_hash"] = "launched"
  (tmp_path / "sweep.json").write_text(json.dumps({"runs": records}))
  sweep_lib.dry_run(sweep, str(tmp_path), "local", out=io.StringIO())
  again = json.loads((tmp_path / "sweep.json").read_text())["runs"]
  assert [r["config_hash"] for r in again] == ["launched"] + hashes[1:]
