"""`python -m m3oe_jax.report --reference=FILE`: the reference's numbers beside each row (mean ±
std, difference, Welch's t against scipy, n a side), per cell too, in the figures; rows on one
side only shown as missing; a bad reference file is one line naming it."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from m3oe_jax.report import collect, compare, reference, report, tables
from tests.helpers import SWEEP_DOMAINS, SWEEP_TASKS, m3oe_auc, make_sweep, mtl_auc

REPO = pathlib.Path(__file__).resolve().parents[1]
SEEDS = (2022, 2023, 2024)


def their_auc(d, t, seed):
  """The reference's M3oE AUC: a little below ours, with its own spread over seeds."""
  return 0.74 + 0.01 * d + 0.002 * t + 0.006 * (seed - 2022)


def _cells(auc, seed, leave_out=()):
  return {f"{d}/{t}": {"auc": auc(di, ti, seed),
                       "logloss": 0.45 + 0.01 * di + 0.002 * (seed - 2022) ** 2}
          for di, d in enumerate(SWEEP_DOMAINS) for ti, t in enumerate(SWEEP_TASKS)
          if (di, ti) not in leave_out}


def reference_document(**changes):
  rows = {
      "m3oe-mdmt": {"seeds": {s: {"cells": _cells(their_auc, s), "seconds": 1.5} for s in SEEDS},
                    "note": "kept"},
      # two seeds, one of them incomplete: one complete seed on the reference's side
      "mmoe-mtl": {"seeds": {2022: {"cells": _cells(mtl_auc, 2022)},
                             2023: {"cells": _cells(mtl_auc, 2023, leave_out=[(2, 1)])}}},
      "ple-mdmt": {"seeds": {s: {"cells": _cells(their_auc, s)} for s in SEEDS}},  # not ours
  }
  value = reference.document(SWEEP_DOMAINS, SWEEP_TASKS, rows, name="authors' code",
                             description="canned", source={"commits": {"M3oE": "1b30217"}})
  value.update(changes)
  return value


@pytest.fixture()
def sweep_and_reference(tmp_path):
  make_sweep(tmp_path / "sweep")
  path = tmp_path / "reference.json"
  path.write_text(json.dumps(reference_document()))
  return tmp_path / "sweep", path


def _overall(auc, seeds):
  return [float(np.mean([auc(d, t, s) for d in range(3) for t in range(2)])) for s in seeds]


def test_comparison_numbers(sweep_and_reference):
  sweep, path = sweep_and_reference
  runs, _ = collect.collect([sweep])
  table = tables.build_table(runs)
  ref = reference.load(path)
  by_label = {c.label: c for c in compare.compare(table, ref)}
  # Our rows first (the table's order), then the reference's own.
  assert list(by_label) == ["mmoe-mtl", "m3oe-mdmt", "mlp-single", "ple-mdmt"]
  m3oe = by_label["m3oe-mdmt"].summary["AUC"]
  ours, theirs = _overall(m3oe_auc, SEEDS), _overall(their_auc, SEEDS)
  assert m3oe.ours.values == pytest.approx(ours)
  assert m3oe.theirs.values == pytest.approx(theirs)
  assert m3oe.diff == pytest.approx(np.mean(ours) - np.mean(theirs))
  expected = stats.ttest_ind(ours, theirs, equal_var=False)
  t, p = m3oe.welch()
  assert t == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
  assert m3oe.noise == pytest.approx(2 * np.sqrt(np.var(ours, ddof=1) / 3
                                                 + np.var(theirs, ddof=1) / 3))
  # The incomplete seed counts for its cells, not for the overall AUC.
  mmoe = by_label["mmoe-mtl"]
  assert mmoe.summary["AUC"].theirs.n == 1 and mmoe.summary["AUC"].welch() == (None, None)
  assert mmoe.cells["age_35_45_50_56/like"].theirs.n == 1
  assert mmoe.cells["age_1_18/click"].theirs.n == 2
  # One side only: the other is missing, nothing is dropped.
  assert by_label["ple-mdmt"].ours is None and by_label["ple-mdmt"].summary["AUC"].ours.n == 0
  assert by_label["mlp-single"].theirs is None
  assert by_label["mlp-single"].summary["AUC"].theirs.mean is None
  their_loss = [0.45 + 0.01 * 2 + 0.002 * (s - 2022) ** 2 for s in SEEDS]
  assert by_label["m3oe-mdmt"].logloss_cells["age_35_45_50_56/like"].theirs.values == (
      pytest.approx(their_loss))
  assert by_label["m3oe-mdmt"].logloss_cells["age_35_45_50_56/like"].ours.n == 3


def test_report_shows_both_sides(sweep_and_reference, tmp_path):
  sweep, path = sweep_and_reference
  result = report.write_report([str(sweep)], str(tmp_path / "out"), str(path))
  md = (tmp_path / "out" / "report.md").read_text()
  assert "## Beside the reference: authors' code" in md
  assert "Source commits: M3oE 1b30217." in md
  ours, theirs = _overall(m3oe_auc, SEEDS), _overall(their_auc, SEEDS)
  t = stats.ttest_ind(ours, theirs, equal_var=False).statistic
  line = next(x for x in md.splitlines() if x.startswith("| M3oE-MDMT | 3 / 3 |"))
  cells = [c.strip() for c in line.split("|")[1:-1]]
  assert cells[2] == f"{100 * np.mean(theirs):.2f} ± {100 * np.std(theirs, ddof=1):.2f}"
  assert cells[3] == f"{100 * np.mean(ours):.2f} ± {100 * np.std(ours, ddof=1):.2f}"
  assert cells[4] == f"{100 * (np.mean(ours) - np.mean(theirs)):+.2f}"
  assert cells[6] == f"{t:.2f}"
  noise = 2 * np.sqrt(np.var(ours, ddof=1) / 3 + np.var(theirs, ddof=1) / 3)
  within = abs(np.mean(ours) - np.mean(theirs)) <= max(0.005, noise)
  assert cells[8] == ("yes" if within else "no")
  assert ("Rows by overall AUC, highest first: authors' code: M3oE-MDMT > MMoE-MTL; "
          "m3oe_jax: M3oE-MDMT > MMoE-MTL. The same order: yes.") in md
  # Rows on one side only.
  assert "| PLE-MDMT | 3 / — | " in md and "| missing | missing |" in md
  assert "| MLP (per d,t) | — / 0 | missing | missing | missing |" in md
  # Per cell: the reference / ours (difference).
  cell_line = next(x for x in md.splitlines() if x.startswith("| M3oE-MDMT | ")
                   and " / " in x.split("|")[2] and "±" not in x)
  first = cell_line.split("|")[2].strip()
  mine = np.mean([m3oe_auc(0, 0, s) for s in SEEDS])
  other = np.mean([their_auc(0, 0, s) for s in SEEDS])
  assert first == f"{100 * other:.2f} / {100 * mine:.2f} ({100 * (mine - other):+.2f})"
  data = json.loads((tmp_path / "out" / "report.json").read_text())["reference"]
  m3oe = next(r for r in data["rows"] if r["label"] == "m3oe-mdmt")
  assert m3oe["summary"]["AUC"]["welch_t"] == pytest.approx(t)
  assert m3oe["summary"]["AUC"]["reference"]["n"] == 3
  assert m3oe["summary"]["AUC"]["agrees"] == within
  assert data["order"] == {"reference": ["m3oe-mdmt", "mmoe-mtl"],
                           "ours": ["m3oe-mdmt", "mmoe-mtl"]}
  assert {r["label"]: (r["in_ours"], r["in_reference"]) for r in data["rows"]}["ple-mdmt"] == (
      False, True)
  for png in ("reference_auc.png", "per_pair_auc.png"):
    assert (tmp_path / "out" / "plots" / png).stat().st_size > 1000
  assert "reference_auc.png" in {p.name for p in result["files"]}


@pytest.mark.parametrize("ours, theirs, agrees", [
    ([0.700, 0.702, 0.704], [0.703, 0.705, 0.707], True),   # 0.3 points apart: the floor
    ([0.700, 0.702, 0.704], [0.708, 0.710, 0.712], False),  # 0.8 apart, noise 0.33
    ([0.68, 0.70, 0.72], [0.70, 0.72, 0.74], True),         # 2 apart, noise 3.3
    ([0.70], [0.706], False),                               # one seed a side: the floor only
    ([], [0.70, 0.71], None),                               # a side missing
])
def test_a_row_agrees_within_the_larger_of_half_a_point_and_the_noise(ours, theirs, agrees):
  assert compare.Difference(tables.Stat(ours), tables.Stat(theirs)).agrees() is agrees


def test_a_reversed_order_is_reported(sweep_and_reference, tmp_path):
  sweep, path = sweep_and_reference
  value = reference_document()
  value["rows"]["mmoe-mtl"]["seeds"]["2022"]["cells"] = _cells(lambda d, t, s: 0.9, 2022)
  path.write_text(json.dumps(value))
  result = report.write_report([str(sweep)], str(tmp_path / "out"), str(path))
  assert ("authors' code: MMoE-MTL > M3oE-MDMT; m3oe_jax: M3oE-MDMT > MMoE-MTL. "
          "The same order: no.") in result["markdown"]


def test_report_without_reference_is_unchanged(sweep_and_reference, tmp_path):
  sweep, _ = sweep_and_reference
  report.write_report([str(sweep)], str(tmp_path / "out"))
  assert "Beside the reference" not in (tmp_path / "out" / "report.md").read_text()
  assert not (tmp_path / "out" / "plots" / "reference_auc.png").exists()
  assert json.loads((tmp_path / "out" / "report.json").read_text())["reference"] is None


@pytest.mark.parametrize("content, why", [
    ("{not json", "not JSON"),
    (json.dumps([1, 2]), "not a JSON object"),
    (json.dumps(reference_document(format="other/1")), "'format' is 'other/1'"),
    (json.dumps(reference_document(tasks="click")), "'tasks' is not a list"),
    (json.dumps(reference_document(rows={"m3oe": {"seeds": {}}})), "a label is MODEL-KIND"),
    (json.dumps(reference_document(rows={"m3oe-mdmt": {"seeds": {"x": {"cells": {}}}}})),
     "seed 'x' is not a whole number"),
    (json.dumps(reference_document(rows={"m3oe-mdmt": {"seeds": {"1": {"cells": {
        "age_25/buy": {"auc": 0.5, "logloss": 0.1}}}}}})), "cell 'age_25/buy'"),
    (json.dumps(reference_document(rows={"m3oe-mdmt": {"seeds": {"1": {"cells": {
        "age_25/like": {"auc": 1.5, "logloss": 0.1}}}}}})), "needs 'auc' (0..1 or null)"),
])
def test_bad_reference_is_one_line_naming_the_file(sweep_and_reference, tmp_path, content, why):
  sweep, path = sweep_and_reference
  path.write_text(content)
  with pytest.raises(reference.ReferenceError, match=why.replace("(", r"\(").replace(")", r"\)")):
    reference.load(path)
  with pytest.raises(collect.ReportError, match=str(path)):
    report.write_report([str(sweep)], str(tmp_path / "out"), str(path))
  assert not (tmp_path / "out").exists()  # refused before anything is written


def test_bad_reference_on_the_command_line(sweep_and_reference, tmp_path):
  sweep, path = sweep_and_reference
  path.write_text("{not json")
  for given, message in ((path, f"{path}: not JSON ("),
                         (tmp_path / "nope.json", f"{tmp_path / 'nope.json'}: no such reference "
                                                  "file")):
    proc = subprocess.run([sys.executable, "-m", "m3oe_jax.report", f"--workdir={sweep}",
                           f"--reference={given}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"m3oe_jax.report: error: {message}")


def test_cells_that_do_not_line_up_are_warned(sweep_and_reference, tmp_path):
  sweep, path = sweep_and_reference
  value = reference.document(["young", "old"], SWEEP_TASKS, {"m3oe-mdmt": {"seeds": {1: {
      "cells": {"young/click": {"auc": 0.7, "logloss": 0.5}}}}}})
  path.write_text(json.dumps(value))
  result = report.write_report([str(sweep)], str(tmp_path / "out"), str(path))
  assert any("its (domain, task) cells are not this table's (only in the reference: old/click"
             in w for w in result["warnings"])
  m3oe = next(c for c in result["comparisons"] if c.label == "m3oe-mdmt")
  assert m3oe.cells["young/click"].ours.n == 0 and m3oe.cells["young/click"].theirs.n == 1


def test_runs_on_other_data_than_the_papers_get_no_paper_numbers(tmp_path):
  make_sweep(tmp_path / "sweep")
  for metrics_file in (tmp_path / "sweep").rglob("metrics.json"):
    record = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**record, "paper_data": False}))  # e.g. MovieLens-100K
  runs, _ = collect.collect([tmp_path / "sweep"])
  table = tables.build_table(runs)
  assert not table.paper_comparable
  assert all(row.paper is None for row in table.rows)
  assert any("other data than the paper's movielens" in w for w in table.warnings)
