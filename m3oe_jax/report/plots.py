"""The report's figures (matplotlib, Agg backend; PNG files).

  per_pair_auc.png           test AUC per (domain, task), one bar per table row,
                             error bars = std over seeds; with a reference, a hatched bar
                             per reference row beside ours;
  reference_auc.png          with a reference: the overall AUC of every row, ours (circle)
                             and the reference's (square), mean ± std over seeds;
  validation_auc.png         validation mean AUC vs epoch, one line per row (per seed,
                             the mean over the row's (domain, task) pairs at that epoch,
                             pooled over its runs; then the mean over seeds);
  m3oe_gates_<kind>.png      M3oE's mean gate weights, rows (domain, task), columns
                             shared experts, at each run's best epoch, mean over seeds;
  m3oe_fusion_<kind>.png     M3oE's four fusion weights (after their sigmoid) vs epoch,
                             mean over seeds.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from m3oe_jax.report import compare  # noqa: E402
from m3oe_jax.report.collect import RunInfo  # noqa: E402
from m3oe_jax.report.reference import Reference  # noqa: E402
from m3oe_jax.report.tables import Table  # noqa: E402

FUSION = ("bal_d", "bal_t", "exp_d", "exp_t")


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def per_pair_auc(table: Table, path: pathlib.Path,
                 comparisons: list[compare.Comparison] | None = None) -> pathlib.Path | None:
  """Ours: plain bars; the reference's (when given): a hatched bar of the same colour beside
  each row's own."""
  bars = []  # (label, means, stds, hatch, colour index)
  ours = {f"{r.model}-{r.kind}": r for r in table.rows if any(s.n for s in r.cells.values())}
  theirs = {c.label: c for c in comparisons or []
            if any(c.cells[p].theirs.n for p in table.pairs if p in c.cells)}
  for i, label in enumerate(dict.fromkeys([*ours, *theirs])):
    if label in ours:
      row = ours[label]
      bars.append((row.name, [row.cells[p].mean for p in table.pairs],
                   [row.cells[p].std for p in table.pairs], None, i))
    if label in theirs:
      c = theirs[label]
      stats = [c.cells[p].theirs if p in c.cells else None for p in table.pairs]
      bars.append((f"{c.name} (reference)", [s.mean if s else None for s in stats],
                   [s.std if s else None for s in stats], "//", i))
  if not bars or not table.pairs:
    return None
  palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  x = np.arange(len(table.pairs))
  width = 0.8 / len(bars)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(table.pairs) + 0.25 * len(bars)), 4.5))
  for i, (label, means, stds, hatch, c) in enumerate(bars):
    ax.bar(x - 0.4 + width * (i + 0.5), [np.nan if m is None else m for m in means], width,
           yerr=[0.0 if s is None else s for s in stds], capsize=2, label=label,
           color=palette[c % len(palette)], hatch=hatch,
           edgecolor="black" if hatch else None, linewidth=0.4 if hatch else 0)
  ax.set_xticks(x, table.columns)
  finite = [m for _, means, _, _, _ in bars for m in means if m is not None]
  if finite:
    ax.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.03))
  ax.set_ylabel("test AUC")
  ax.set_title("Test AUC per (domain, task); error bars: std over seeds"
               + ("; hatched: the reference" if comparisons else ""))
  ax.legend(fontsize=7, ncol=2)
  return _save(fig, path)


def reference_auc(comparisons: list[compare.Comparison], ref: Reference,
                  path: pathlib.Path) -> pathlib.Path | None:
  """Overall AUC per row: ours and the reference's, mean ± std over seeds; a row missing on a
  side has no marker there."""
  if not comparisons:
    return None
  fig, ax = plt.subplots(figsize=(7, 0.45 * len(comparisons) + 1.8))
  y = np.arange(len(comparisons))
  drawn = False
  for offset, side, marker, label in ((-0.12, "theirs", "s", ref.name),
                                      (0.12, "ours", "o", "m3oe_jax")):
    stats = [getattr(c.summary["AUC"], side) for c in comparisons]
    keep = [i for i, s in enumerate(stats) if s.mean is not None]
    if not keep:
      continue
    drawn = True
    ax.errorbar([stats[i].mean for i in keep], y[keep] + offset,
                xerr=[stats[i].std or 0.0 for i in keep], fmt=marker, capsize=3, label=label)
  if not drawn:
    plt.close(fig)
    return None
  ax.set_yticks(y, [c.name for c in comparisons])
  ax.invert_yaxis()
  ax.set_xlabel("overall test AUC (mean of the (domain, task) AUCs)")
  ax.set_title(f"m3oe_jax beside {ref.name}: mean ± std over seeds")
  ax.legend(fontsize=8)
  return _save(fig, path)


def _validation_curve(runs: list[RunInfo]) -> tuple[list[int], list[float]]:
  by_seed: dict = {}
  for run in runs:
    for record in run.epochs():
      aucs = [m["auc"] for m in record["validation"]["pairs"].values() if m["auc"] is not None]
      by_seed.setdefault(run.seed, {}).setdefault(int(record["epoch"]), []).extend(aucs)
  epochs = sorted({e for per in by_seed.values() for e in per})
  xs, ys = [], []
  for epoch in epochs:
    values = [np.mean(per[epoch]) for per in by_seed.values() if per.get(epoch)]
    if values:
      xs.append(epoch)
      ys.append(float(np.mean(values)))
  return xs, ys


def validation_auc(table: Table, runs: list[RunInfo], path: pathlib.Path) -> pathlib.Path | None:
  fig, ax = plt.subplots(figsize=(7, 4.5))
  drawn = 0
  for row in table.rows:
    mine = [r for r in runs if (r.model, r.kind) == (row.model, row.kind)
            and r.status in ("finished", "running")]
    xs, ys = _validation_curve(mine)
    if xs:
      ax.plot(xs, ys, marker="o", markersize=3, label=row.name)
      drawn += 1
  if not drawn:
    plt.close(fig)
    return None
  ax.set_xlabel("epoch")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel("validation mean AUC")
  ax.set_title("Validation mean AUC over (domain, task) pairs; mean over seeds")
  ax.legend(fontsize=7)
  return _save(fig, path)


def _record_at(run: RunInfo, epoch: int | None) -> dict | None:
  epochs = run.epochs()
  if not epochs:
    return None
  if epoch is not None:
    for record in epochs:
      if int(record["epoch"]) == epoch:
        return record
  return epochs[-1]


def m3oe_gates(table: Table, runs: list[RunInfo], kind: str,
               path: pathlib.Path) -> pathlib.Path | None:
  """Gate weights [pairs, experts] at each finished run's best epoch, mean over runs."""
  grids = []
  labels = None
  for run in runs:
    if (run.model, run.kind) != ("m3oe", kind) or run.status != "finished":
      continue
    record = _record_at(run, (run.metrics or {}).get("best_epoch"))
    gates = (record or {}).get("diagnostics", {}).get("gates")
    if gates is None:
      continue
    try:
      gates = np.asarray(gates, np.float64)  # [D', T', E]
    except (TypeError, ValueError):
      continue
    if gates.ndim != 3:
      continue
    names = [f"{d}/{t}" for d in run.metrics["domains"] for t in run.metrics["tasks"]]
    grid = gates.reshape(-1, gates.shape[-1])
    if labels is None:
      labels = names
    if names != labels or (grids and grid.shape != grids[0].shape):
      continue
    grids.append(grid)
  if not grids:
    return None
  mean = np.mean(grids, axis=0)
  fig, ax = plt.subplots(figsize=(1.0 * mean.shape[1] + 4, 0.45 * mean.shape[0] + 1.8))
  image = ax.imshow(mean, aspect="auto", cmap="viridis", vmin=0.0)
  for (i, j), v in np.ndenumerate(mean):
    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
            color="white" if v < 0.6 * mean.max() else "black")
  ax.set_xticks(range(mean.shape[1]), [f"expert {e}" for e in range(mean.shape[1])])
  ax.set_yticks(range(mean.shape[0]), labels)
  ax.set_title(f"M3oE gate weights at the best epoch (mean over {len(grids)} runs)")
  fig.colorbar(image, ax=ax)
  return _save(fig, path)


def m3oe_fusion(runs: list[RunInfo], kind: str, path: pathlib.Path) -> pathlib.Path | None:
  series = {name: {} for name in FUSION}
  for run in runs:
    if (run.model, run.kind) != ("m3oe", kind) or run.status not in ("finished", "running"):
      continue
    for record in run.epochs():
      weights = record.get("diagnostics", {}).get("fusion_weights") or {}
      for name in FUSION:
        if name in weights:
          series[name].setdefault(int(record["epoch"]), []).append(float(weights[name]))
  if not any(series.values()):
    return None
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name in FUSION:
    epochs = sorted(series[name])
    if not epochs:
      continue
    mean = np.array([np.mean(series[name][e]) for e in epochs])
    std = np.array([np.std(series[name][e]) for e in epochs])
    ax.plot(epochs, mean, marker="o", markersize=3, label=name)
    ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
  ax.set_xlabel("epoch")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel("sigmoid(θ)")
  ax.set_title("M3oE fusion weights over training (mean ± std over seeds)")
  ax.legend()
  return _save(fig, path)


def all_plots(table: Table, runs: list[RunInfo], out: pathlib.Path,
              ref: Reference | None = None,
              comparisons: list[compare.Comparison] | None = None) -> list[pathlib.Path]:
  """Writes every figure that has data into `out`; returns their paths."""
  out.mkdir(parents=True, exist_ok=True)
  written = [per_pair_auc(table, out / "per_pair_auc.png", comparisons),
             validation_auc(table, runs, out / "validation_auc.png")]
  if ref is not None and comparisons:
    written.append(reference_auc(comparisons, ref, out / "reference_auc.png"))
  for kind in dict.fromkeys(r.kind for r in runs if r.model == "m3oe"):
    written.append(m3oe_gates(table, runs, kind, out / f"m3oe_gates_{kind}.png"))
    written.append(m3oe_fusion(runs, kind, out / f"m3oe_fusion_{kind}.png"))
  return [p for p in written if p is not None]
