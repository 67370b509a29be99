"""This project's rows beside a reference file's (`--reference`, m3oe_jax/report/reference.py).

Per row label (MODEL-KIND) present on either side, in the order of the table, then of the
reference: the overall AUC (per seed, the mean of the row's per-(domain, task) test AUCs, over
complete seeds) and the LogLoss (mean of pairs) of each side as mean ± sample std over seeds,
the difference (ours minus the reference), the noise of that difference (2 standard errors,
Welch: 2 * sqrt(s1^2/n1 + s2^2/n2)) and Welch's t-test (unequal variances, two-sided, via
scipy); per (domain, task) cell the AUC and the logloss of each side and the difference. A
row on one side only is shown with the other side missing.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from m3oe_jax.report.reference import Reference, ReferenceRow
from m3oe_jax.report.tables import Row, Stat, Table

METRICS = ("AUC", "LogLoss (mean of pairs)")
# A row agrees with the reference when |difference| <= max(AGREEMENT_FLOOR, 2 SE): the
# floor (half a point of AUC) keeps rows that barely vary over seeds from disagreeing over
# differences smaller than any the paper reports.
AGREEMENT_FLOOR = 0.005


@dataclasses.dataclass
class Difference:
  ours: Stat
  theirs: Stat

  @property
  def diff(self) -> float | None:
    if self.ours.mean is None or self.theirs.mean is None:
      return None
    return self.ours.mean - self.theirs.mean

  @property
  def noise(self) -> float | None:
    """2 standard errors of the difference of the means (Welch); None below 2 per side."""
    if self.ours.std is None or self.theirs.std is None:
      return None
    return 2.0 * math.sqrt(self.ours.std ** 2 / self.ours.n + self.theirs.std ** 2 / self.theirs.n)

  def agrees(self, floor: float = AGREEMENT_FLOOR) -> bool | None:
    """|difference| <= max(floor, noise); None when either side has no mean, and with
    under 2 seeds a side (no noise) only the floor counts."""
    if self.diff is None:
      return None
    return abs(self.diff) <= max(floor, self.noise or 0.0)

  def welch(self) -> tuple[float | None, float | None]:
    """(t, two-sided p) of Welch's t-test, (None, None) when not testable (under 2 values a
    side, or no variance on either)."""
    if self.ours.n < 2 or self.theirs.n < 2:
      return None, None
    if not (self.ours.std or self.theirs.std):
      return None, None
    from scipy import stats  # pylint: disable=import-outside-toplevel
    result = stats.ttest_ind(self.ours.values, self.theirs.values, equal_var=False)
    t, p = float(result.statistic), float(result.pvalue)
    return (t, p) if math.isfinite(t) else (None, None)


@dataclasses.dataclass
class Comparison:
  label: str
  name: str
  ours: Row | None
  theirs: ReferenceRow | None
  summary: dict[str, Difference]  # METRICS -> difference
  cells: dict[str, Difference]  # "domain/task" (the reference's pairs) -> AUC difference
  logloss_cells: dict[str, Difference]  # the same, of the logloss


def reference_summary(ref: Reference, row: ReferenceRow | None) -> dict[str, Stat]:
  """The reference row's overall AUC and mean logloss per complete seed."""
  out = {m: Stat([]) for m in METRICS}
  if row is None:
    return out
  for seed in sorted(row.seeds):
    if not ref.complete(row, seed):
      continue
    cells = [row.seeds[seed][p] for p in ref.pairs]
    aucs = [c["auc"] for c in cells if c["auc"] is not None]
    losses = [c["logloss"] for c in cells if c["logloss"] is not None]
    if len(aucs) == len(cells):
      out["AUC"].values.append(float(np.mean(aucs)))
    if len(losses) == len(cells):
      out["LogLoss (mean of pairs)"].values.append(float(np.mean(losses)))
  return out


def reference_cell(row: ReferenceRow | None, pair: str, metric: str = "auc") -> Stat:
  if row is None:
    return Stat([])
  return Stat([row.seeds[s][pair][metric] for s in sorted(row.seeds)
               if pair in row.seeds[s] and row.seeds[s][pair][metric] is not None])


def compare(table: Table, ref: Reference) -> list[Comparison]:
  """One Comparison per row label on either side."""
  ours = {f"{r.model}-{r.kind}": r for r in table.rows}
  labels = list(dict.fromkeys([*ours, *ref.rows]))
  out = []
  for label in labels:
    mine, theirs = ours.get(label), ref.rows.get(label)
    their_summary = reference_summary(ref, theirs)
    summary = {m: Difference(mine.summary[m] if mine else Stat([]), their_summary[m])
               for m in METRICS}
    cells = {p: Difference(mine.cells[p] if mine and p in mine.cells else Stat([]),
                           reference_cell(theirs, p)) for p in ref.pairs}
    losses = {p: Difference(mine.logloss_cells[p] if mine and p in mine.logloss_cells
                            else Stat([]), reference_cell(theirs, p, "logloss"))
              for p in ref.pairs}
    name = mine.name if mine else _row_name(label)
    out.append(Comparison(label=label, name=name, ours=mine, theirs=theirs, summary=summary,
                          cells=cells, logloss_cells=losses))
  return out


def _row_name(label: str) -> str:
  from m3oe_jax.report.tables import row_name  # pylint: disable=import-outside-toplevel
  model, kind = label.rsplit("-", 1)
  return row_name(model, kind)


def warnings(table: Table, ref: Reference) -> list[str]:
  """Why cells of the two sides may not line up."""
  out = []
  if table.pairs and set(table.pairs) != set(ref.pairs):
    only = sorted(set(ref.pairs) - set(table.pairs))
    out.append(f"{ref.path}: its (domain, task) cells are not this table's"
               + (f" (only in the reference: {', '.join(only[:6])})" if only else ""))
  return out


# ---------------------------------------------------------------------------
# Output.

def _x100(v: float | None, signed: bool = False) -> str:
  if v is None:
    return "missing"
  return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def _stat_text(stat: Stat) -> str:
  if stat.mean is None:
    return "missing"
  return _x100(stat.mean) + (f" ± {_x100(stat.std)}" if stat.std is not None else "")


def _seeds(c: Comparison, stat_ours: Stat, stat_theirs: Stat) -> str:
  ours = "—" if c.ours is None else f"{stat_ours.n}"
  theirs = "—" if c.theirs is None else f"{stat_theirs.n}"
  return f"{theirs} / {ours}"


def summary_markdown(comparisons: list[Comparison], metric: str = "AUC",
                     theirs_name: str = "reference", ours_name: str = "m3oe_jax") -> str:
  """The per-row table of one summary metric."""
  lines = [f"| row | n ({theirs_name} / {ours_name}) | {theirs_name} | {ours_name} | difference "
           f"| noise (2 SE) | Welch t | p (two-sided) | within max({_x100(AGREEMENT_FLOOR)}, "
           "2 SE) |", "|---|---|---|---|---|---|---|---|---|"]
  for c in comparisons:
    d = c.summary[metric]
    t, p = d.welch()
    agrees = d.agrees()
    lines.append(" | ".join([
        f"| {c.name}", _seeds(c, d.ours, d.theirs), _stat_text(d.theirs), _stat_text(d.ours),
        _x100(d.diff, signed=True) if d.diff is not None else "missing",
        "n/a" if d.noise is None else _x100(d.noise),
        "n/a" if t is None else f"{t:.2f}", "n/a" if p is None else f"{p:.3g}",
        "n/a" if agrees is None else ("yes" if agrees else "no")]) + " |")
  return "\n".join(lines)


def orderings(comparisons: list[Comparison], metric: str = "AUC") -> tuple[list, list]:
  """The labels of the rows with a mean on both sides, highest mean first: by the
  reference's means, and by ours."""
  both = [c for c in comparisons
          if c.summary[metric].ours.mean is not None and c.summary[metric].theirs.mean is not None]
  theirs = sorted(both, key=lambda c: -c.summary[metric].theirs.mean)
  ours = sorted(both, key=lambda c: -c.summary[metric].ours.mean)
  return [c.label for c in theirs], [c.label for c in ours]


def ordering_markdown(comparisons: list[Comparison], theirs_name: str = "reference",
                      ours_name: str = "m3oe_jax") -> str:
  """One line: the rows on both sides by overall AUC, highest first, on each side, and
  whether the order is the same."""
  theirs, ours = orderings(comparisons)
  if len(theirs) < 2:
    return "Order of the rows: fewer than two rows on both sides."
  names = {c.label: c.name for c in comparisons}
  same = "yes" if theirs == ours else "no"
  return (f"Rows by overall AUC, highest first: {theirs_name}: "
          f"{' > '.join(names[x] for x in theirs)}; {ours_name}: "
          f"{' > '.join(names[x] for x in ours)}. The same order: {same}.")


def cells_markdown(comparisons: list[Comparison], ref: Reference, columns: list[str] | None = None,
                   theirs_name: str = "reference", metric: str = "auc") -> str:
  """Per (domain, task) test AUC (or `metric="logloss"`): `theirs / ours (difference)` x 100,
  means over seeds."""
  columns = columns or [f"d{ref.domains.index(p.split('/')[0]) + 1}"
                        f"t{ref.tasks.index(p.split('/', 1)[1]) + 1}" for p in ref.pairs]
  lines = ["| row | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
  for c in comparisons:
    texts = []
    for pair in ref.pairs:
      d = (c.cells if metric == "auc" else c.logloss_cells)[pair]
      theirs = "missing" if d.theirs.mean is None else _x100(d.theirs.mean)
      ours = "missing" if d.ours.mean is None else _x100(d.ours.mean)
      diff = "" if d.diff is None else f" ({_x100(d.diff, signed=True)})"
      texts.append(f"{theirs} / {ours}{diff}")
    lines.append(f"| {c.name} | " + " | ".join(texts) + " |")
  legend = ", ".join(f"d{i + 1} = {d}" for i, d in enumerate(ref.domains))
  legend += "; " + ", ".join(f"t{i + 1} = {t}" for i, t in enumerate(ref.tasks))
  what = "test AUC" if metric == "auc" else "test logloss"
  lines += ["", f"Each cell: {theirs_name} / ours (ours minus {theirs_name}), {what} x 100, "
            f"mean over seeds. Columns: {legend}."]
  return "\n".join(lines)


def markdown(table: Table, ref: Reference, comparisons: list[Comparison] | None = None) -> str:
  """The whole comparison: source, overall AUC, LogLoss, per-cell AUC (`warnings` says
  where the two sides' cells do not line up)."""
  comparisons = comparisons if comparisons is not None else compare(table, ref)
  theirs_name = ref.name
  parts = [f"Reference: `{ref.path}`" + (f": {ref.description}" if ref.description else "")
           + "."]
  commits = ref.source.get("commits") if isinstance(ref.source.get("commits"), dict) else {}
  if commits:
    parts.append("Source commits: " + ", ".join(f"{k} {v}" for k, v in commits.items()) + ".")
  if isinstance(ref.data.get("description"), str):
    parts.append(f"Data: {ref.data['description']}.")
  parts += ["", "Overall AUC (mean of the six per-(domain, task) test AUCs), x 100:", "",
            summary_markdown(comparisons, "AUC", theirs_name), "",
            ordering_markdown(comparisons, theirs_name), "",
            "LogLoss (mean of the per-(domain, task) test loglosses), x 100:", "",
            summary_markdown(comparisons, "LogLoss (mean of pairs)", theirs_name), "",
            "mean ± sample std over complete seeds; n: complete seeds, — where the row is "
            "missing on that side; difference: ours minus the reference; noise: 2 standard "
            "errors of the difference (Welch); Welch t and p: Welch's two-sided t-test over "
            "the per-seed values (n/a below 2 seeds a side); within: |difference| at most "
            f"the larger of {_x100(AGREEMENT_FLOOR)} and the noise.", "",
            "Per (domain, task), AUC:", "", cells_markdown(comparisons, ref, None, theirs_name),
            "", "Per (domain, task), LogLoss:", "",
            cells_markdown(comparisons, ref, None, theirs_name, "logloss")]
  return "\n".join(parts)


def as_dict(comparisons: list[Comparison]) -> list[dict]:
  """The comparison as plain data (report.json)."""
  def stat(s: Stat) -> dict:
    return {"mean": s.mean, "std": s.std, "n": s.n, "values": s.values}

  out = []
  for c in comparisons:
    summary = {}
    for metric, d in c.summary.items():
      t, p = d.welch()
      summary[metric] = {"ours": stat(d.ours), "reference": stat(d.theirs), "difference": d.diff,
                         "noise_2se": d.noise, "welch_t": t, "p_two_sided": p,
                         "agrees": d.agrees()}
    out.append({"label": c.label, "name": c.name, "in_ours": c.ours is not None,
                "in_reference": c.theirs is not None, "summary": summary,
                "cells": {p: {"ours": stat(d.ours), "reference": stat(d.theirs),
                              "difference": d.diff} for p, d in c.cells.items()},
                "logloss_cells": {p: {"ours": stat(d.ours), "reference": stat(d.theirs),
                                      "difference": d.diff}
                                  for p, d in c.logloss_cells.items()}})
  return out
