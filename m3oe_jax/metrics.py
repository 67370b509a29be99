"""Exact ROC AUC and logloss per (domain, task), computed on the host in float64.

`evaluate_predictions` reports, for every (domain, task) pair, the AUC (ties count
half; `None` when the pair has only one label class) and the logloss, their
means over the pairs where they are defined, per-task AUC over all domains, the
overall AUC (mean of the per-task AUCs, as scikit-learn's macro average over the
task columns) and the overall logloss (mean over all examples and tasks).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
  """Mann-Whitney AUC with average ranks for ties; None if one class is absent."""
  labels = np.asarray(labels).astype(bool).ravel()
  scores = np.asarray(scores, np.float64).ravel()
  num_pos = int(labels.sum())
  num_neg = labels.size - num_pos
  if num_pos == 0 or num_neg == 0:
    return None
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  ranks_of_value = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average ranks
  rank_sum = ranks_of_value[inverse][labels].sum()
  return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float | None:
  """Mean binary cross-entropy; probabilities clipped to [eps, 1 - eps] of their dtype."""
  probs = np.asarray(probs)
  if probs.size == 0:
    return None
  eps = np.finfo(probs.dtype if np.issubdtype(probs.dtype, np.floating) else np.float64).eps
  p = np.clip(probs.astype(np.float64).ravel(), eps, 1 - eps)
  y = np.asarray(labels, np.float64).ravel()
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _mean_defined(values: Sequence[float | None]) -> float | None:
  defined = [v for v in values if v is not None]
  return float(np.mean(defined)) if defined else None


def evaluate_predictions(probs: np.ndarray, labels: np.ndarray, domain: np.ndarray,
                         domain_names: Sequence[str],
                         task_names: Sequence[str]) -> dict[str, Any]:
  """Metrics of probabilities [N, T] against labels [N, T] for domains [N]."""
  pairs = {}
  for d, d_name in enumerate(domain_names):
    rows = domain == d
    for t, t_name in enumerate(task_names):
      y, p = labels[rows, t], probs[rows, t]
      pairs[f"{d_name}/{t_name}"] = {
          "auc": roc_auc(y, p),
          "logloss": log_loss(y, p),
          "count": int(rows.sum()),
          "positive_rate": float(y.mean()) if y.size else None,
      }
  per_task_auc = {t_name: roc_auc(labels[:, t], probs[:, t])
                  for t, t_name in enumerate(task_names)}
  return {
      "pairs": pairs,
      "mean_auc": _mean_defined([m["auc"] for m in pairs.values()]),
      "mean_logloss": _mean_defined([m["logloss"] for m in pairs.values()]),
      "undefined_auc_pairs": sorted(k for k, m in pairs.items() if m["auc"] is None),
      "task_auc": per_task_auc,
      "overall_auc": _mean_defined(list(per_task_auc.values())),
      "overall_logloss": log_loss(labels, probs),
      "count": int(len(domain)),
  }


def scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
  """Flat {name: value} of the defined numbers in `metrics`, for TensorBoard."""
  out = {}
  for pair, m in metrics["pairs"].items():
    for key in ("auc", "logloss"):
      if m[key] is not None:
        out[f"{prefix}/{key}/{pair}"] = m[key]
  for key in ("mean_auc", "mean_logloss", "overall_auc", "overall_logloss"):
    if metrics[key] is not None:
      out[f"{prefix}/{key}"] = metrics[key]
  return out


def format_table(metrics: dict[str, Any], title: str) -> str:
  """A fixed-width table: one row per (domain, task), then the summary rows."""

  def fmt(v):
    return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

  w = max([len("domain/task")] + [len(p) for p in metrics["pairs"]])
  lines = [title, f"{'domain/task':<{w}} {'AUC':>8} {'logloss':>8} {'rows':>9} {'pos':>7}"]
  for pair, m in metrics["pairs"].items():
    lines.append(f"{pair:<{w}} {fmt(m['auc']):>8} {fmt(m['logloss']):>8} "
                 f"{m['count']:>9d} {fmt(m['positive_rate']):>7}")
  lines.append(f"{'mean over pairs':<{w}} {fmt(metrics['mean_auc']):>8} "
               f"{fmt(metrics['mean_logloss']):>8}")
  lines.append(f"{'overall':<{w}} {fmt(metrics['overall_auc']):>8} "
               f"{fmt(metrics['overall_logloss']):>8} {metrics['count']:>9d}")
  if metrics["undefined_auc_pairs"]:
    lines.append("AUC undefined (one label class only): "
                 + ", ".join(metrics["undefined_auc_pairs"]))
  return "\n".join(lines)
