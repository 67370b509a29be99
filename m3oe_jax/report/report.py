"""Writes the Table 2 report of a sweep (or of any run workdirs).

  python -m m3oe_jax.report --workdir=SWEEP_DIR [--workdir=MORE ...] [--out=DIR]
      [--reference=FILE]

Into --out (default: <first workdir>/report): `report.md` (run status, the table,
M3oE's significance test, the paper's table for reference, the figures),
`table2.csv` (long format, 0-1 scale), `table2.tex`, `runs.csv` (every run and its
status), `report.json` and `plots/*.png`. The Markdown is also printed. A run whose
metrics.json is another run's (rejected) or unreadable (invalid) is left out of
the tables and named, in the report and on stderr, with why; the rest is reported.
With --reference (a file in the format of `m3oe_jax/report/reference.py`, e.g. the authors'
code's numbers that reproduce/side_by_side.py writes), each row is also put beside the
reference's (`compare.py`): in report.md, in report.json and in the figures.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pathlib
import sys

from m3oe_jax.report import compare, paper, plots, reference, tables
from m3oe_jax.report.collect import ReportError, RunInfo, collect, problems, status_counts


def runs_csv(runs: list[RunInfo]) -> str:
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["name", "model", "kind", "seed", "domains", "tasks", "status",
                   "test_mean_auc", "workdir", "error", "verified"])
  for r in runs:
    auc = (r.metrics or {}).get("test", {}).get("mean_auc")
    verified = ("yes" if not r.unverified else "no") if r.status == "finished" else ""
    writer.writerow([r.name, r.model, r.kind, r.seed, " ".join(map(str, r.domains)),
                     " ".join(map(str, r.tasks)), r.status, "" if auc is None else repr(auc),
                     str(r.workdir), r.error or "", verified])
  return out.getvalue()


def _status_section(runs: list[RunInfo], warnings: list[str]) -> str:
  counts = status_counts(runs)
  lines = [f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + "."]
  pending = [r for r in runs if r.status != "finished"]
  if pending:
    lines += ["", "| run | status | workdir | error |", "|---|---|---|---|"]
    for r in pending:
      error = (r.error or "").splitlines()[0][:200] if r.error else ""
      lines.append(f"| {r.name} | {r.status} | {r.workdir} | {error.replace('|', '/')} |")
    lines += ["", "running: the workdir exists without metrics.json (training, or interrupted: "
              "rerun the sweep to resume); missing: no workdir; failed: recorded as failed in "
              "sweep.json (its error is in sweep.json); rejected: its metrics.json is another "
              "run's (left out); invalid: its metrics.json is not JSON or not what the "
              "trainer writes (left out)."]
  if warnings:
    lines += ["", "Warnings:"] + [f"- {w}" for w in warnings]
  return "\n".join(lines)


def _paper_section(data: str | None) -> str:
  datasets = [data] if data in paper.TABLE2 else list(paper.TABLE2)
  parts = [f"Source: {paper.SOURCE}.", ""]
  parts += [paper.markdown(d) + "\n" for d in datasets]
  parts += ["Notes:"] + [f"- {n}" for n in paper.NOTES]
  return "\n".join(parts)


def write_report(workdirs: list[str], out: str | None = None,
                 reference_file: str | None = None) -> dict:
  """Collects the runs, writes every output; returns {"markdown", "table", "files", ...}.
  `reference_file`: a reference file to put beside the rows (read first, so a bad one stops
  the report before anything is written)."""
  ref = reference.load(reference_file) if reference_file else None
  runs, sweeps = collect(workdirs)
  out_dir = pathlib.Path(out) if out else pathlib.Path(workdirs[0]) / "report"
  out_dir.mkdir(parents=True, exist_ok=True)
  for run in runs:
    if run.status in ("finished", "running"):
      run.epochs()  # notes the lines of metrics.jsonl it skips
  warnings = problems(runs)
  table = tables.build_table(runs)
  comparisons = compare.compare(table, ref) if ref else None
  if ref:
    warnings += compare.warnings(table, ref)
  figures = plots.all_plots(table, runs, out_dir / "plots", ref, comparisons)
  sources = ", ".join(str(w) for w in workdirs)
  configs = ", ".join(s.get("config", "") for s in sweeps if s.get("config"))
  sections = [
      "# Table 2 report", "",
      f"Runs from {sources}" + (f" (sweep {configs})" if configs else "")
      + f"; data: {table.data or 'unknown'}.", "",
      "## Runs", "", _status_section(runs, warnings), "",
      "## Table 2: test AUC per (domain, task), overall AUC and LogLoss", "",
      tables.markdown(table), "",
  ]
  if table.warnings:
    sections += ["Warnings:"] + [f"- {w}" for w in table.warnings] + [""]
  sections += ["## M3oE against the best baseline", "", tables.significance_markdown(table), ""]
  if ref:
    sections += [f"## Beside the reference: {ref.name}", "",
                 compare.markdown(table, ref, comparisons), ""]
  sections += ["## Figures", ""]
  sections += [f"![{p.stem}](plots/{p.name})" for p in figures] or ["(no data to plot)"]
  sections += ["", "## Reference: the paper's Table 2", "", _paper_section(table.data), ""]
  markdown = "\n".join(sections)
  files = {"report.md": markdown, "table2.csv": tables.csv_text(table),
           "table2.tex": tables.latex(table), "runs.csv": runs_csv(runs),
           "report.json": json.dumps({"table": tables.as_dict(table),
                                      "runs": status_counts(runs),
                                      "warnings": warnings,
                                      "reference": None if ref is None else {
                                          "file": ref.path, "name": ref.name,
                                          "rows": compare.as_dict(comparisons),
                                          "order": dict(zip(("reference", "ours"),
                                                            compare.orderings(comparisons)))}},
                             indent=2)}
  for name, text in files.items():
    (out_dir / name).write_text(text)
  return {"markdown": markdown, "table": table, "runs": runs, "out": out_dir,
          "comparisons": comparisons,
          "warnings": warnings, "files": [out_dir / n for n in files] + figures}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m m3oe_jax.report",
      description="Table 2 report of a sweep directory or of run workdirs.")
  parser.add_argument("--workdir", action="append", required=True, type=os.path.expanduser,
                      help="a sweep directory (with sweep.json), a run's workdir, or a "
                      "directory holding run workdirs; repeatable")
  parser.add_argument("--out", default=None, type=os.path.expanduser,
                      help="output directory (default: <first workdir>/report)")
  parser.add_argument("--reference", default=None, type=os.path.expanduser,
                      help="a reference file (m3oe_jax/report/reference.py, e.g. the authors' "
                      "code's numbers from reproduce/side_by_side.py) to put beside each row")
  args = parser.parse_args(argv)
  try:
    result = write_report(args.workdir, args.out, args.reference)
  except ReportError as e:
    print(f"m3oe_jax.report: error: {e}", file=sys.stderr)
    return 2
  for warning in result["warnings"]:
    print(f"m3oe_jax.report: warning: {warning}", file=sys.stderr)
  print(result["markdown"])
  print(f"\nwrote {result['out']}: " + ", ".join(p.name for p in result["files"]))
  return 0
