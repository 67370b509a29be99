"""The Table 2 layout: one row per (model, variant kind), built from the runs.

How a row is built (spec baselines.md §2):
  * for each seed, the row's per-(domain, task) cells come from the run that trained
    that pair: a -MTL row takes domain d's cells from its run on domain d, a -MDL row
    task t's from its run on task t, the per-(d, t) row each cell from its own run, a
    -MDMT row all from its one run;
  * per seed, overall AUC = mean of the row's per-(d, t) test AUCs (the paper's "AUC"),
    LogLoss (mean of pairs) = mean of the per-(d, t) test loglosses, LogLoss (pooled
    BCE) = the BCE over every test row and task of the row's runs, i.e. the per-pair
    loglosses weighted by their row counts (for a -MDMT run this is its
    `overall_logloss`); these need every cell of that seed (a complete seed);
  * each column is then the mean ± sample standard deviation (ddof=1) over seeds.
The best mean of each column is marked (highest AUC, lowest logloss). On MovieLens or
KuaiRand the paper's number and our difference to it are shown beside each cell.
M3oE's gain over the best baseline (highest mean overall AUC) is tested with Welch's
t-test (unequal variances) over the per-seed overall AUCs, via scipy.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Any

import numpy as np

from m3oe_jax.report import paper
from m3oe_jax.report.collect import RunInfo

MODEL_NAMES = {"m3oe": "M3oE", "mlp": "MLP", "shared_bottom": "ShBot", "mmoe": "MMoE",
               "ple": "PLE", "adatt": "AdaTT", "adatt_sp": "AdaTT-sp", "star": "STAR",
               "m2m": "M2M"}
KIND_SUFFIX = {"single": " (per d,t)", "mtl": "-MTL", "mdl": "-MDL", "mdmt": "-MDMT"}
SUMMARY_COLUMNS = ("AUC", "LogLoss (mean of pairs)", "LogLoss (pooled BCE)")
ALPHA = 0.05


def row_name(model: str, kind: str) -> str:
  return MODEL_NAMES.get(model, model) + KIND_SUFFIX.get(kind, f" ({kind})")


@dataclasses.dataclass
class Stat:
  values: list[float]  # one per seed

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def mean(self) -> float | None:
    return float(np.mean(self.values)) if self.values else None

  @property
  def std(self) -> float | None:
    return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None


@dataclasses.dataclass
class Row:
  model: str
  kind: str
  seeds: list  # every seed with a run in this row
  cells: dict[str, Stat]  # pair -> test AUC over seeds
  logloss_cells: dict[str, Stat]
  summary: dict[str, Stat]  # SUMMARY_COLUMNS -> over complete seeds
  per_seed: dict  # seed -> {"cells": {pair: metrics}, "complete": bool, "missing": [...]}
  paper: tuple | None = None  # (cells, auc, logloss), x 100

  @property
  def name(self) -> str:
    return row_name(self.model, self.kind)

  @property
  def complete_seeds(self) -> list:
    return [s for s in self.seeds if self.per_seed[s]["complete"]]


@dataclasses.dataclass
class Table:
  data: str | None
  domains: list[str]
  tasks: list[str]
  pairs: list[str]  # "domain/task", domain-major
  rows: list[Row]
  warnings: list[str]
  significance: dict | None = None

  @property
  def columns(self) -> list[str]:
    """Short column names: d1t1, d1t2, ... (1-based, as the paper)."""
    return [f"d{self.domains.index(p.split('/')[0]) + 1}t{self.tasks.index(p.split('/', 1)[1]) + 1}"
            for p in self.pairs]

  @property
  def paper_comparable(self) -> bool:
    return (self.data in paper.TABLE2 and len(self.domains) == paper.NUM_DOMAINS
            and len(self.tasks) == paper.NUM_TASKS)

  def best(self, column: str) -> float | None:
    """The best mean of a column over the rows."""
    means = [m for m in (self.column_stat(r, column).mean for r in self.rows) if m is not None]
    if not means:
      return None
    return min(means) if column.startswith("LogLoss") else max(means)

  def column_stat(self, row: Row, column: str) -> Stat:
    if column in SUMMARY_COLUMNS:
      return row.summary[column]
    return row.cells[self.pairs[self.columns.index(column)]]

  def paper_value(self, row: Row, column: str) -> float | None:
    """The paper's number for a cell, on the 0-1 scale."""
    if not self.paper_comparable or row.paper is None:
      return None
    cells, auc, logloss = row.paper
    if column == "AUC":
      return auc / 100
    if column.startswith("LogLoss"):
      return logloss / 100
    return cells[paper.COLUMNS.index(column)] / 100


def _order(runs: list[RunInfo], field: str) -> list[str]:
  """Domain (or task) names in index order: the longest list any run reports, with
  the names a sweep's single-index runs give to their index."""
  finished = [r for r in runs if r.metrics]
  by_index: dict[int, str] = {}
  longest = max((list(r.metrics.get(field, [])) for r in finished), key=len, default=[])
  by_index.update(enumerate(longest))
  for r in finished:
    indices = getattr(r, field)
    names = r.metrics.get(field, [])
    if indices and all(isinstance(i, int) for i in indices) and len(indices) == len(names):
      for i, name in zip(indices, names):
        by_index.setdefault(i, name)
  order = [by_index[i] for i in sorted(by_index)]
  order = list(dict.fromkeys(order))
  for r in finished:
    for name in r.metrics.get(field, []):
      if name not in order:
        order.append(name)
  return order


def build_table(runs: list[RunInfo]) -> Table:
  """The table of every (model, kind) with at least one run, in order of appearance."""
  finished = [r for r in runs if r.status == "finished" and r.metrics]
  datas = sorted({r.metrics.get("data") for r in finished if r.metrics.get("data")})
  warnings = []
  if len(datas) > 1:
    warnings.append(f"runs on several datasets are mixed: {datas}")
  data = datas[0] if len(datas) == 1 else None
  other_data = sorted({r.name for r in finished if r.metrics.get("paper_data") is False})
  if data is not None and other_data:
    warnings.append(f"{len(other_data)} runs trained on other data than the paper's {data} "
                    f"(e.g. {other_data[0]}): the paper's numbers are not shown beside them")
    data = f"{data} (not the paper's data)"
  domains, tasks = _order(runs, "domains"), _order(runs, "tasks")
  pairs = [f"{d}/{t}" for d in domains for t in tasks]

  keys = list(dict.fromkeys((r.model, r.kind) for r in runs))
  rows = []
  for model, kind in keys:
    mine = [r for r in runs if (r.model, r.kind) == (model, kind)]
    seeds = list(dict.fromkeys(r.seed for r in mine))
    per_seed = {}
    for seed in seeds:
      cells: dict[str, dict] = {}
      for r in mine:
        if r.seed != seed or r.status != "finished" or not r.metrics:
          continue
        for pair, m in r.metrics["test"]["pairs"].items():
          if pair in cells:
            warnings.append(f"{row_name(model, kind)} seed {seed}: pair {pair} comes from "
                            f"two runs; kept the first, ignored {r.name}")
            continue
          cells[pair] = m
      missing = [p for p in pairs if p not in cells]
      per_seed[seed] = {"cells": cells, "complete": not missing, "missing": missing}
    auc_cells = {p: Stat([per_seed[s]["cells"][p]["auc"] for s in seeds
                          if p in per_seed[s]["cells"]
                          and per_seed[s]["cells"][p]["auc"] is not None]) for p in pairs}
    ll_cells = {p: Stat([per_seed[s]["cells"][p]["logloss"] for s in seeds
                         if p in per_seed[s]["cells"]
                         and per_seed[s]["cells"][p]["logloss"] is not None]) for p in pairs}
    summary = {c: Stat([]) for c in SUMMARY_COLUMNS}
    for seed in seeds:
      if not per_seed[seed]["complete"]:
        continue
      ms = [per_seed[seed]["cells"][p] for p in pairs]
      aucs = [m["auc"] for m in ms if m["auc"] is not None]
      lls = [(m["logloss"], m["count"]) for m in ms if m["logloss"] is not None]
      if aucs:
        summary["AUC"].values.append(float(np.mean(aucs)))
      if lls:
        summary["LogLoss (mean of pairs)"].values.append(float(np.mean([v for v, _ in lls])))
        total = sum(c for _, c in lls)
        if total:
          summary["LogLoss (pooled BCE)"].values.append(sum(v * c for v, c in lls) / total)
    rows.append(Row(model=model, kind=kind, seeds=seeds, cells=auc_cells,
                    logloss_cells=ll_cells, summary=summary, per_seed=per_seed,
                    paper=paper.lookup(data, model, kind)))
  table = Table(data=data, domains=domains, tasks=tasks, pairs=pairs, rows=rows,
                warnings=warnings)
  table.significance = significance(table)
  return table


def significance(table: Table) -> dict | None:
  """Welch's t-test of M3oE's per-seed overall AUCs against the best baseline's.

  The best baseline is the non-M3oE row with the highest mean overall AUC. H1 (one
  sided): M3oE's mean is higher; the two-sided p is given too. Significant when the
  one-sided p < ALPHA. None when there is no M3oE row or no baseline row.
  """
  ours = [r for r in table.rows if r.model == "m3oe" and r.summary["AUC"].n]
  others = [r for r in table.rows if r.model != "m3oe" and r.summary["AUC"].n]
  if not ours or not others:
    return None
  m3oe = max(ours, key=lambda r: r.summary["AUC"].mean)
  base = max(others, key=lambda r: r.summary["AUC"].mean)
  a, b = m3oe.summary["AUC"].values, base.summary["AUC"].values
  result = {"test": "Welch's t-test (unequal variances) over seeds, one-sided "
                    "H1: mean overall AUC of M3oE > that of the best baseline",
            "m3oe": m3oe.name, "baseline": base.name, "n_m3oe": len(a), "n_baseline": len(b),
            "m3oe_mean": float(np.mean(a)), "baseline_mean": float(np.mean(b)),
            "difference": float(np.mean(a) - np.mean(b)), "alpha": ALPHA,
            "t": None, "p_one_sided": None, "p_two_sided": None, "significant": None}
  if len(a) < 2 or len(b) < 2:
    result["note"] = "not testable: needs at least 2 complete seeds on each side"
    return result
  from scipy import stats  # pylint: disable=import-outside-toplevel
  two = stats.ttest_ind(a, b, equal_var=False)
  one = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
  if not math.isfinite(float(two.statistic)):
    result["note"] = "not testable: both sides have zero variance over seeds"
    return result
  result.update(t=float(two.statistic), p_two_sided=float(two.pvalue),
                p_one_sided=float(one.pvalue), significant=bool(one.pvalue < ALPHA))
  return result


# ---------------------------------------------------------------------------
# Output.

def _x100(v: float | None, digits: int = 2) -> str:
  return "n/a" if v is None else f"{100 * v:.{digits}f}"


def _mean_std_text(table: Table, row: Row, column: str, bold: tuple[str, str],
                   std_format: str) -> str | None:
  """The mean x 100, wrapped in `bold` when it is the column's best, followed by
  `std_format` filled with the std x 100; None where the cell has no value."""
  stat = table.column_stat(row, column)
  if stat.mean is None:
    return None
  text = _x100(stat.mean)
  best = table.best(column)
  if best is not None and abs(stat.mean - best) < 1e-12:
    text = f"{bold[0]}{text}{bold[1]}"
  if stat.std is not None:
    text += std_format.format(_x100(stat.std))
  return text


def _cell_text(table: Table, row: Row, column: str) -> str:
  stat = table.column_stat(row, column)
  text = _mean_std_text(table, row, column, ("**", "**"), " ± {}") or "n/a"
  ref = table.paper_value(row, column)
  if ref is not None:
    diff = "" if stat.mean is None else f", {100 * (stat.mean - ref):+.2f}"
    text += f" (paper {100 * ref:.2f}{diff})"
  return text


def _seeds_text(row: Row) -> str:
  text = f"{len(row.complete_seeds)}/{len(row.seeds)}"
  partial = [s for s in row.seeds if not row.per_seed[s]["complete"]]
  if partial:
    text += " (incomplete: " + ", ".join(
        f"{s}: {len(row.per_seed[s]['missing'])} cells missing" for s in partial) + ")"
  return text


def markdown(table: Table) -> str:
  columns = [*table.columns, *SUMMARY_COLUMNS]
  header = ["row", "seeds", *columns]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in table.rows:
    cells = [_cell_text(table, row, c) for c in columns]
    lines.append("| " + " | ".join([row.name, _seeds_text(row), *cells]) + " |")
  legend = ", ".join(f"d{i + 1} = {d}" for i, d in enumerate(table.domains))
  legend += "; " + ", ".join(f"t{i + 1} = {t}" for i, t in enumerate(table.tasks))
  notes = [
      "", f"Columns: {legend}.",
      "Test AUC and LogLoss x 100; mean ± sample std (ddof=1) over seeds; **bold**: best "
      "mean of the column (highest AUC, lowest LogLoss). `seeds`: complete seeds / seeds "
      "with a run; a cell averages the seeds that have it, the three summary columns only "
      "complete seeds.",
      "AUC = mean of the row's per-(domain, task) AUCs; LogLoss (mean of pairs) = mean of "
      "the per-(domain, task) loglosses; LogLoss (pooled BCE) = BCE over all test rows and "
      "tasks of the row's runs (per-pair loglosses weighted by their row counts).",
  ]
  if table.paper_comparable:
    notes.append("(paper X, ±D): the paper's number and our mean minus it. The paper's "
                 "overall LogLoss is shown beside both of our LogLoss columns.")
  return "\n".join(lines + notes)


def significance_markdown(table: Table) -> str:
  s = table.significance
  if s is None:
    return "No M3oE row and baseline row with a complete seed: nothing to test."
  lines = [f"{s['test']}; significant if p < {s['alpha']}.", "",
           f"- {s['m3oe']}: {100 * s['m3oe_mean']:.2f} over {s['n_m3oe']} seeds; best "
           f"baseline {s['baseline']}: {100 * s['baseline_mean']:.2f} over "
           f"{s['n_baseline']} seeds; difference {100 * s['difference']:+.2f} (AUC x 100)."]
  if s.get("note"):
    lines.append(f"- {s['note']}.")
  else:
    lines.append(f"- t = {s['t']:.3f}, one-sided p = {s['p_one_sided']:.4g}, two-sided p = "
                 f"{s['p_two_sided']:.4g}: "
                 + ("significant." if s["significant"] else "not significant."))
  lines.append("- The best baseline is picked on the same test numbers, which favours it.")
  return "\n".join(lines)


def csv_text(table: Table) -> str:
  """Long format, values on the 0-1 scale: one line per (row, column, metric)."""
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["row", "model", "kind", "column", "pair", "metric", "mean", "std", "n",
                   "values", "best", "paper", "diff_to_paper"])

  def emit(row, column, pair, metric, stat, best, ref):
    mean = stat.mean
    writer.writerow([row.name, row.model, row.kind, column, pair, metric,
                     "" if mean is None else repr(mean),
                     "" if stat.std is None else repr(stat.std), stat.n,
                     ";".join(repr(v) for v in stat.values), best,
                     "" if ref is None else repr(ref),
                     "" if ref is None or mean is None else repr(mean - ref)])

  for row in table.rows:
    for column, pair in zip(table.columns, table.pairs):
      stat = row.cells[pair]
      best = stat.mean is not None and abs(stat.mean - table.best(column)) < 1e-12
      emit(row, column, pair, "auc", stat, best, table.paper_value(row, column))
      emit(row, column, pair, "logloss", row.logloss_cells[pair], "", None)
    for column in SUMMARY_COLUMNS:
      stat = row.summary[column]
      best = stat.mean is not None and abs(stat.mean - table.best(column)) < 1e-12
      metric = {"AUC": "overall_auc", "LogLoss (mean of pairs)": "mean_logloss",
                "LogLoss (pooled BCE)": "pooled_bce"}[column]
      emit(row, column, "", metric, stat, best, table.paper_value(row, column))
  return out.getvalue()


def latex(table: Table) -> str:
  columns = [*table.columns, "AUC", "LogLoss (mean)", "LogLoss (pooled)"]
  keys = [*table.columns, *SUMMARY_COLUMNS]
  lines = [r"\begin{tabular}{l" + "c" * len(columns) + "}", r"\toprule",
           " & ".join(["Model", *columns]) + r" \\", r"\midrule"]
  for row in table.rows:
    cells = [_mean_std_text(table, row, key, (r"\textbf{", "}"), r"{{\scriptsize$\pm${}}}")
             or "--" for key in keys]
    lines.append(" & ".join([row.name.replace("_", r"\_"), *cells]) + r" \\")
  lines += [r"\bottomrule", r"\end{tabular}"]
  return "\n".join(lines) + "\n"


def as_dict(table: Table) -> dict[str, Any]:
  """The table as plain data (for report.json)."""
  return {
      "data": table.data, "domains": table.domains, "tasks": table.tasks,
      "pairs": table.pairs, "columns": table.columns, "warnings": table.warnings,
      "significance": table.significance,
      "rows": [{"name": r.name, "model": r.model, "kind": r.kind, "seeds": r.seeds,
                "complete_seeds": r.complete_seeds,
                "auc": {p: {"mean": s.mean, "std": s.std, "values": s.values}
                        for p, s in r.cells.items()},
                "summary": {c: {"mean": s.mean, "std": s.std, "values": s.values}
                            for c, s in r.summary.items()},
                "paper": r.paper} for r in table.rows],
  }
