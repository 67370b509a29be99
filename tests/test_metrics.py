import numpy as np
import pytest
from sklearn import metrics as skm

from m3oe_jax import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_logloss_equal_sklearn_with_ties(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 5000)
  # Rounded scores create many ties, which must count half.
  probs = np.round(rng.random(5000) * 0.3 + labels * 0.2, 2).astype(np.float32)
  probs = np.clip(probs, 0.01, 0.99)
  assert abs(metrics.roc_auc(labels, probs) - skm.roc_auc_score(labels, probs)) < 1e-6
  assert abs(metrics.log_loss(labels, probs) - skm.log_loss(labels, probs)) < 1e-6


def test_all_tied_scores_give_half():
  assert metrics.roc_auc(np.array([0, 1, 0, 1]), np.full(4, 0.3)) == 0.5


def test_per_pair_metrics_match_sklearn_and_report_undefined_pairs():
  rng = np.random.default_rng(3)
  n, domains, tasks = 3000, ["a", "b", "c"], ["click", "like"]
  domain = rng.integers(0, 3, n)
  labels = rng.integers(0, 2, (n, 2)).astype(np.float32)
  labels[domain == 2, 1] = 0.0  # pair (c, like) has one class only
  probs = rng.random((n, 2)).astype(np.float32)
  result = metrics.evaluate_predictions(probs, labels, domain, domains, tasks)
  for d, d_name in enumerate(domains):
    for t, t_name in enumerate(tasks):
      pair = result["pairs"][f"{d_name}/{t_name}"]
      rows = domain == d
      assert pair["count"] == rows.sum()
      assert abs(pair["logloss"] - skm.log_loss(labels[rows, t], probs[rows, t],
                                                labels=[0, 1])) < 1e-6
      if (d_name, t_name) == ("c", "like"):
        assert pair["auc"] is None
      else:
        assert abs(pair["auc"] - skm.roc_auc_score(labels[rows, t], probs[rows, t])) < 1e-6
  assert result["undefined_auc_pairs"] == ["c/like"]
  defined = [p["auc"] for k, p in result["pairs"].items() if k != "c/like"]
  assert abs(result["mean_auc"] - np.mean(defined)) < 1e-12
  assert abs(result["overall_auc"] - skm.roc_auc_score(labels, probs)) < 1e-6
  assert abs(result["overall_logloss"] - skm.log_loss(labels.ravel(), probs.ravel())) < 1e-6
  table = metrics.format_table(result, "validation")
  assert "c/like" in table and "n/a" in table
