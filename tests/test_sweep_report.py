"""The sweep (m3oe_jax.sweep) and the Table 2 report (m3oe_jax.report).

Fast tests build sweep directories by hand (sweep.json + metrics.json files) and
check how the report combines them; one slow test runs a real tiny sweep (two
models x two seeds, one epoch each, plus a run that fails at once) and checks the
report against the runs' own metrics.json files.
"""

import io
import json
import pathlib
import shlex
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from m3oe_jax import run_identity
from m3oe_jax import sweep as sweep_lib
from m3oe_jax.report import collect, paper, report, tables
from tests.helpers import (SWEEP_CONFIG, SWEEP_DOMAINS, SWEEP_TASKS, m3oe_auc, make_sweep,
                           mtl_auc, sweep_pairs, write_sweep_run)

REPO = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# The grid.

def test_table2_grid_expands_to_the_papers_runs():
  config = sweep_lib.load_config_file(SWEEP_CONFIG, "movielens")
  runs = sweep_lib.expand(config)
  # Per seed: MLP 6, five -MTL rows x 3, four -MDL rows x 2, five -MDMT rows x 1.
  assert len(runs) == 5 * (6 + 5 * 3 + 4 * 2 + 5)
  assert len({r.name for r in runs}) == len(runs)
  names = {r.name for r in runs}
  assert {"mlp-single/d2t1/seed2026", "mmoe-mtl/d0/seed2022", "star-mdl/t1/seed2024",
          "m3oe-mdmt/all/seed2025", "adatt_sp-mtl/d2/seed2023"} <= names
  by_name = {r.name: r for r in runs}
  run = by_name["mmoe-mtl/d1/seed2023"]
  assert (run.domains, run.tasks, run.seed) == ((1,), (), 2023)
  assert run.config_arg == "configs/movielens.py:model=mmoe"
  assert by_name["ple-mdl/t0/seed2022"].tasks == (0,)
  assert {(r.model, r.kind) for r in runs} == set(paper.TABLE2["movielens"])
  config = sweep_lib.load_config_file(SWEEP_CONFIG, "kuairand,seeds=1,runs=m3oe-mdmt+mlp-single")
  assert [r.name for r in sweep_lib.expand(config)][:2] == ["m3oe-mdmt/all/seed2022",
                                                            "mlp-single/d0t0/seed2022"]


def test_run_config_matches_the_command():
  config = sweep_lib.load_config_file(SWEEP_CONFIG, "tiny,epochs=1")
  run = next(r for r in sweep_lib.expand(config) if r.name == "mmoe-mtl/d2/seed2023")
  c = sweep_lib.run_config(config, run)
  assert c.model.name == "mmoe" and c.seed == 2023 and c.num_epochs == 1
  assert tuple(c.variant.domains) == (2,) and tuple(c.variant.tasks) == ()
  assert c.optimizer.schedule == "none"  # the baselines' setup, from `model=mmoe`
  command = run.command("/w/x")
  assert command[:5] == ["python", "-m", "m3oe_jax.train",
                         "--config=configs/synthetic.py:tiny,model=mmoe", "--workdir=/w/x"]
  assert command[5:] == ["--config.seed=2023", "--config.variant.domains=(2,)",
                         "--config.num_epochs=1"]


def test_bad_sweep_arguments_are_refused():
  with pytest.raises(ValueError, match="unknown runs"):
    sweep_lib.load_config_file(SWEEP_CONFIG, "tiny,runs=mmoe-xyz")
  config = sweep_lib.load_config_file(SWEEP_CONFIG, "tiny")
  config.runs = (("mmoe", "per_domain"),)
  with pytest.raises(ValueError, match="kind"):
    sweep_lib.expand(config)


# ---------------------------------------------------------------------------
# Hand-made sweeps: how rows are combined.

def test_mtl_row_combines_its_per_domain_runs(tmp_path):
  make_sweep(tmp_path)
  runs, _ = collect.collect([tmp_path])
  table = tables.build_table(runs)
  assert table.data == "movielens"
  assert table.domains == SWEEP_DOMAINS and table.tasks == SWEEP_TASKS
  assert table.columns == ["d1t1", "d1t2", "d2t1", "d2t2", "d3t1", "d3t2"]
  rows = {r.name: r for r in table.rows}
  mtl = rows["MMoE-MTL"]
  seeds = (2022, 2023, 2024)
  for d in range(3):
    for t in range(2):
      values = [mtl_auc(d, t, s) for s in seeds]
      cell = mtl.cells[f"{SWEEP_DOMAINS[d]}/{SWEEP_TASKS[t]}"]
      assert cell.values == pytest.approx(values)
      assert cell.mean == pytest.approx(np.mean(values))
      assert cell.std == pytest.approx(np.std(values, ddof=1))
  overall = [np.mean([mtl_auc(d, t, s) for d in range(3) for t in range(2)]) for s in seeds]
  assert mtl.summary["AUC"].values == pytest.approx(overall)
  # Pooled BCE: per-pair loglosses weighted by their row counts.
  pairs = sweep_pairs(SWEEP_DOMAINS, SWEEP_TASKS, mtl_auc, 2022)
  pooled = sum(m["logloss"] * m["count"] for m in pairs.values()) / sum(
      m["count"] for m in pairs.values())
  mean_ll = np.mean([m["logloss"] for m in pairs.values()])
  assert mtl.summary["LogLoss (pooled BCE)"].values[0] == pytest.approx(pooled)
  assert mtl.summary["LogLoss (mean of pairs)"].values[0] == pytest.approx(mean_ll)
  assert pooled != pytest.approx(mean_ll)
  # The MLP row: seed 2022 incomplete (one failed, one running, one missing run).
  mlp = rows["MLP (per d,t)"]
  assert mlp.complete_seeds == [] and mlp.summary["AUC"].n == 0
  assert mlp.cells["age_1_18/click"].values == pytest.approx([mtl_auc(0, 0, 2022)])
  assert mlp.cells["age_35_45_50_56/like"].n == 0
  # Paper numbers beside the cells.
  assert table.paper_value(mtl, "d2t1") == pytest.approx(0.7658)
  assert table.paper_value(rows["M3oE-MDMT"], "AUC") == pytest.approx(0.7702)


def test_statuses_and_significance(tmp_path):
  make_sweep(tmp_path)
  runs, _ = collect.collect([tmp_path])
  status = {r.name: r.status for r in runs}
  assert status["mlp-single/d2t1/seed2022"] == "failed"
  assert status["mlp-single/d2t0/seed2022"] == "missing"
  assert status["mlp-single/d1t1/seed2022"] == "running"
  assert status["mmoe-mtl/d0/seed2022"] == "finished"
  assert collect.status_counts(runs) == {"finished": 15, "running": 1, "failed": 1,
                                         "missing": 1, "rejected": 0, "invalid": 0}
  table = tables.build_table(runs)
  s = table.significance
  assert s["m3oe"] == "M3oE-MDMT" and s["baseline"] == "MMoE-MTL"
  a = [np.mean([m3oe_auc(d, t, x) for d in range(3) for t in range(2)])
       for x in (2022, 2023, 2024)]
  b = [np.mean([mtl_auc(d, t, x) for d in range(3) for t in range(2)])
       for x in (2022, 2023, 2024)]
  expected = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
  assert s["p_one_sided"] == pytest.approx(expected.pvalue)
  assert s["t"] == pytest.approx(expected.statistic)
  assert s["significant"] == (expected.pvalue < 0.05)


def test_report_files(tmp_path):
  make_sweep(tmp_path / "sweep")
  result = report.write_report([str(tmp_path / "sweep")], str(tmp_path / "out"))
  md = (tmp_path / "out" / "report.md").read_text()
  for needle in ("| mlp-single/d2t1/seed2022 | failed |", "ValueError: boom",
                 "| mlp-single/d2t0/seed2022 | missing |",
                 "| mlp-single/d1t1/seed2022 | running |", "Welch", "SIGIR 2024",
                 "PLE-MDMT", "(paper 76.58,", "LogLoss (pooled BCE)"):
    assert needle in md, needle
  # Bold marks the best of a column: M3oE's overall AUC.
  m3oe_line = next(line for line in md.splitlines() if line.startswith("| M3oE-MDMT"))
  overall = result["table"].rows[1].summary["AUC"]
  assert f"**{100 * overall.mean:.2f}**" in m3oe_line
  lines = (tmp_path / "out" / "table2.csv").read_text().splitlines()
  row = next(x for x in lines if x.startswith("MMoE-MTL,mmoe,mtl,d2t1,"))
  assert float(row.split(",")[6]) == pytest.approx(np.mean([mtl_auc(1, 0, s)
                                                           for s in (2022, 2023, 2024)]))
  for png in ("per_pair_auc.png", "validation_auc.png"):
    assert (tmp_path / "out" / "plots" / png).stat().st_size > 1000
  assert "\\begin{tabular}" in (tmp_path / "out" / "table2.tex").read_text()


def test_plain_workdirs_without_sweep_json(tmp_path):
  write_sweep_run(tmp_path / "a", "one", "m3oe", "mdmt", (), (), 2022, m3oe_auc, "synthetic")
  write_sweep_run(tmp_path / "b", "x/d1", "mmoe", "mtl", (1,), (), 2022, mtl_auc, "synthetic")
  runs, _ = collect.collect([tmp_path / "a" / "one", tmp_path / "b"])
  assert [(r.model, r.kind, r.status) for r in runs] == [("m3oe", "mdmt", "finished"),
                                                          ("mmoe", "mtl", "finished")]
  table = tables.build_table(runs)
  assert not table.paper_comparable
  assert table.rows[1].cells["age_25/like"].mean == pytest.approx(mtl_auc(1, 1, 2022))


def test_report_errors_are_one_clear_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "m3oe_jax.report",
                         f"--workdir={tmp_path / 'nope'}"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip() == f"m3oe_jax.report: error: {tmp_path / 'nope'}: no such directory"
  (tmp_path / "empty").mkdir()
  with pytest.raises(collect.ReportError, match="no sweep.json and no run"):
    collect.collect([tmp_path / "empty"])


# ---------------------------------------------------------------------------
# A real tiny sweep.

@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep")
  config = sweep_lib.load_config_file(SWEEP_CONFIG, "tiny,seeds=2,epochs=1,"
                                      "runs=m3oe-mdmt+mmoe-mdmt")
  # A run that fails at once (batch_size 0 is refused before any data is read).
  config.runs = tuple(config.runs) + (("mlp", "mdmt", (("batch_size", 0),)),)
  # Fewer saves mid-epoch (the epoch-end saves remain): quicker on a busy CPU.
  config.overrides = tuple(config.overrides) + (("checkpoint_every_steps", 1000),
                                                ("log_every_steps", 1000))
  out = io.StringIO()
  counts = sweep_lib.run_sweep(config, str(root), "tiny-test", out=out)
  return root, config, counts, out.getvalue()


@pytest.mark.slow
def test_tiny_sweep_runs_records_and_reports(tiny_sweep, tmp_path):
  root, config, counts, printed = tiny_sweep
  assert counts == {"finished": 4, "skipped": 0, "failed": 2}
  record = json.loads((root / "sweep.json").read_text())
  status = {r["name"]: r["status"] for r in record["runs"]}
  assert status == {"m3oe-mdmt/all/seed2022": "finished", "m3oe-mdmt/all/seed2023": "finished",
                    "mmoe-mdmt/all/seed2022": "finished", "mmoe-mdmt/all/seed2023": "finished",
                    "mlp-mdmt/all/seed2022": "failed", "mlp-mdmt/all/seed2023": "failed"}
  failed = next(r for r in record["runs"] if r["name"] == "mlp-mdmt/all/seed2022")
  assert "batch_size" in failed["error"]
  assert "--config.batch_size=0" in failed["command"]
  assert "FAILED" in printed and "ETA" in printed and "test mean AUC" in printed

  result = report.write_report([str(root)], str(tmp_path / "report"))
  table = result["table"]
  rows = {r.name: r for r in table.rows}
  for name, model in (("M3oE-MDMT", "m3oe"), ("MMoE-MDMT", "mmoe")):
    metrics = [json.loads((root / f"{model}-mdmt/all/seed{s}/metrics.json").read_text())
               for s in (2022, 2023)]
    pair = table.pairs[3]
    values = [m["test"]["pairs"][pair]["auc"] for m in metrics]
    assert rows[name].cells[pair].mean == pytest.approx(np.mean(values))
    assert rows[name].cells[pair].std == pytest.approx(np.std(values, ddof=1))
    # Overall AUC: the mean of the per-pair AUCs, i.e. each run's test mean_auc.
    assert rows[name].summary["AUC"].values == pytest.approx(
        [m["test"]["mean_auc"] for m in metrics])
    # Pooled BCE of a -MDMT row: the runs' own overall_logloss.
    assert rows[name].summary["LogLoss (pooled BCE)"].values == pytest.approx(
        [m["test"]["overall_logloss"] for m in metrics], rel=1e-6)
  # Every finished run is verified: its config hash is sweep.json's and its checkpoints'.
  assert result["warnings"] == []
  hashes = {r["name"]: r["config_hash"] for r in record["runs"]}
  for run in result["runs"]:
    if run.status == "finished":
      assert run.unverified is None
      assert (run.metrics["config_hash"] == hashes[run.name]
              == run_identity.config_hash(collect.checkpoint_config(run.workdir)))
  md = result["markdown"]
  assert "| mlp-mdmt/all/seed2022 | failed |" in md
  assert rows["MLP-MDMT"].summary["AUC"].n == 0
  for png in ("per_pair_auc.png", "validation_auc.png", "m3oe_gates_mdmt.png",
              "m3oe_fusion_mdmt.png"):
    assert (tmp_path / "report" / "plots" / png).stat().st_size > 1000, png

  # A run whose directory is gone is listed as missing.
  import shutil
  copy = tmp_path / "copy"
  shutil.copytree(root, copy)
  shutil.rmtree(copy / "mmoe-mdmt/all/seed2023")
  runs, _ = collect.collect([copy])
  assert {r.name: r.status for r in runs}["mmoe-mdmt/all/seed2023"] == "missing"


@pytest.mark.slow
def test_tiny_sweep_rerun_skips_finished_runs(tiny_sweep):
  root, config, _, _ = tiny_sweep
  called = []

  def fake_train(run_config, workdir):
    called.append(workdir)
    raise RuntimeError("still failing")

  out = io.StringIO()
  counts = sweep_lib.run_sweep(config, str(root), "tiny-test", train_fn=fake_train, out=out)
  assert counts == {"finished": 0, "skipped": 4, "failed": 2}
  assert sorted(pathlib.Path(w).relative_to(root).as_posix() for w in called) == [
      "mlp-mdmt/all/seed2022", "mlp-mdmt/all/seed2023"]
  assert out.getvalue().count("skipped (done)") == 4


@pytest.mark.parametrize("launcher,first", [
    ("local", ["python", "-m", "m3oe_jax.train"]),
    ("single_host_gpu", ["launch/single_host_gpu.sh"]),
    ("slurm", ["launch/slurm_gpu.sh", "--nodes=1"]),
    ("tpu_vm", ["launch/tpu_vm.sh", "run"]),
])
def test_dry_run_prints_one_launcher_command_per_run(launcher, first, tmp_path):
  config = sweep_lib.load_config_file(SWEEP_CONFIG, "tiny")
  out = io.StringIO()
  sweep_lib.dry_run(config, str(tmp_path), launcher, "--gpus=0" if launcher ==
                    "single_host_gpu" else "", out=out)
  commands = [shlex.split(line) for line in out.getvalue().splitlines()]
  expected = sweep_lib.expand(config)
  assert len(commands) == len(expected) == 12
  for command, run in zip(commands, expected):
    assert command[:len(first)] == first
    assert f"--workdir={tmp_path / run.name}" in command
    assert f"--config={run.config_arg}" in command
    assert f"--config.seed={run.seed}" in command
    if launcher != "local":  # trainer flags go after the launcher's `--`
      assert command.index("--") < command.index(f"--config.seed={run.seed}")
  assert not any(p.name == "metrics.json" for p in tmp_path.rglob("*"))
  assert len(json.loads((tmp_path / "sweep.json").read_text())["runs"]) == 12


@pytest.mark.slow
def test_dry_run_command_line_and_the_launchers_accept_it(tmp_path):
  """`python -m m3oe_jax.sweep --dry_run`, then each printed slurm command given to the
  real launcher in its own dry-run mode (which checks its flags)."""
  proc = subprocess.run(
      [sys.executable, "-m", "m3oe_jax.sweep", f"--config={SWEEP_CONFIG}:tiny,seeds=1",
       f"--workdir={tmp_path}", "--dry_run", "--launcher=slurm",
       "--launcher_args=--partition=gpu --gpus-per-node=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == 6  # m3oe-mdmt 1 + mmoe-mtl 3 + star-mdl 2, one seed
  for line in lines[:2]:
    command = shlex.split(line)
    checked = subprocess.run(["bash", str(REPO / command[0]), "--dry-run", *command[1:]],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("sbatch --nodes=1")
