"""The paper's Table 2, as data.

Source: Zhang et al., "M3oE: Multi-Domain Multi-Task Mixture-of Experts Recommendation
Framework", SIGIR 2024, Table 2 (transcribed in the project's spec, baselines.md §6).
Numbers are AUC x 100 per (domain, task) cell, the overall AUC x 100 and the overall
LogLoss x 100, each the mean of 5 seeds (2022-2026). Columns d1t1..d3t2 are domain
indices 0..2 (MovieLens: ages {1,18}, {25}, {35,45,50,56}; KuaiRand: tabs 0, 1, 4) and
tasks click, then like (MovieLens) or long_view (KuaiRand). Per-(domain, task) log
losses were not published, and how the overall LogLoss was aggregated is unknown.

Caveats kept with the numbers:
  * PLE-MDMT: the mean of its six cells is 76.01 (MovieLens) and 63.55 (KuaiRand),
    not the 75.68 and 64.07 printed as its overall AUC; every other row's overall AUC
    is the mean of its cells to 0.01. A transcription or aggregation error in the paper.
  * AdaTT and AdaTT-sp are -MTL (one model per domain) and STAR is -MDL, per the
    caption; the PDF-to-text copy shifts the group labels.
"""

from __future__ import annotations

SOURCE = ('Zhang et al., "M3oE: Multi-Domain Multi-Task Mixture-of Experts Recommendation '
          'Framework", SIGIR 2024, Table 2 (AUC and LogLoss x 100, mean of seeds 2022-2026)')
NOTES = (
    "PLE-MDMT: the paper's overall AUC (MovieLens 75.68, KuaiRand 64.07) is not the mean of "
    "its six cells (76.01 and 63.55); every other row's is, to 0.01.",
    "The paper does not say how its overall LogLoss was aggregated; it is shown beside both "
    "of ours (mean of the per-(domain, task) loglosses, and pooled BCE).",
    "AdaTT and AdaTT-sp are -MTL (one model per domain) and STAR is -MDL, per the caption.",
)
COLUMNS = ("d1t1", "d1t2", "d2t1", "d2t2", "d3t1", "d3t2")
NUM_DOMAINS, NUM_TASKS = 3, 2

# (model, kind) -> the paper's row label.
ROW_NAMES = {
    ("mlp", "single"): "MLP",
    ("shared_bottom", "mtl"): "ShBot-MTL",
    ("ple", "mtl"): "PLE-MTL",
    ("mmoe", "mtl"): "MMOE-MTL",
    ("adatt", "mtl"): "AdaTT",
    ("adatt_sp", "mtl"): "AdaTT-sp",
    ("shared_bottom", "mdl"): "ShBot-MDL",
    ("mmoe", "mdl"): "MMOE-MDL",
    ("ple", "mdl"): "PLE-MDL",
    ("star", "mdl"): "STAR",
    ("shared_bottom", "mdmt"): "ShBot-MDMT",
    ("mmoe", "mdmt"): "MMOE-MDMT",
    ("ple", "mdmt"): "PLE-MDMT",
    ("m2m", "mdmt"): "M2M",
    ("m3oe", "mdmt"): "M3oE",
}

# dataset -> (model, kind) -> (six cells, overall AUC, overall LogLoss), all x 100.
TABLE2 = {
    "movielens": {
        ("mlp", "single"): ((75.02, 76.40, 76.27, 78.66, 73.21, 74.15), 75.62, 51.51),
        ("shared_bottom", "mtl"): ((75.36, 76.25, 75.90, 78.40, 72.51, 73.30), 75.28, 56.39),
        ("ple", "mtl"): ((75.42, 76.23, 75.87, 78.32, 72.73, 72.49), 75.18, 56.49),
        ("mmoe", "mtl"): ((75.35, 76.96, 76.58, 78.73, 73.19, 74.63), 75.90, 51.27),
        ("adatt", "mtl"): ((72.54, 74.24, 74.12, 73.01, 69.75, 70.25), 72.32, 58.72),
        ("adatt_sp", "mtl"): ((72.49, 73.51, 76.04, 77.59, 73.04, 74.26), 74.49, 54.65),
        ("shared_bottom", "mdl"): ((75.70, 76.50, 76.58, 78.10, 73.88, 74.76), 75.92, 51.53),
        ("mmoe", "mdl"): ((75.77, 76.50, 76.71, 78.37, 73.92, 75.16), 76.08, 51.48),
        ("ple", "mdl"): ((75.64, 76.19, 76.48, 78.14, 73.73, 74.85), 75.84, 52.00),
        ("star", "mdl"): ((75.89, 76.85, 76.87, 78.47, 73.68, 74.70), 76.08, 51.11),
        ("shared_bottom", "mdmt"): ((75.94, 77.25, 76.56, 78.63, 73.97, 75.21), 76.26, 50.96),
        ("mmoe", "mdmt"): ((76.07, 77.27, 76.86, 78.67, 73.83, 75.41), 76.35, 51.02),
        ("ple", "mdmt"): ((75.83, 76.95, 76.04, 78.48, 73.67, 75.09), 75.68, 51.90),
        ("m2m", "mdmt"): ((74.12, 75.35, 75.08, 77.13, 72.11, 73.78), 74.59, 54.14),
        ("m3oe", "mdmt"): ((76.61, 78.13, 77.51, 79.33, 74.47, 76.09), 77.02, 50.71),
    },
    "kuairand": {
        ("mlp", "single"): ((58.42, 51.50, 69.28, 70.07, 61.82, 61.22), 62.05, 44.68),
        ("shared_bottom", "mtl"): ((61.33, 56.13, 68.62, 70.67, 63.99, 63.81), 64.09, 53.37),
        ("ple", "mtl"): ((58.56, 53.48, 68.08, 69.39, 63.63, 63.32), 62.74, 54.05),
        ("mmoe", "mtl"): ((62.03, 60.19, 68.81, 70.91, 64.08, 64.32), 65.05, 44.07),
        ("adatt", "mtl"): ((61.92, 60.59, 64.86, 67.28, 61.40, 60.65), 62.78, 44.41),
        ("adatt_sp", "mtl"): ((60.01, 58.28, 65.75, 68.06, 61.15, 60.35), 62.27, 48.80),
        ("shared_bottom", "mdl"): ((64.29, 63.36, 65.83, 67.22, 65.88, 65.47), 65.34, 44.04),
        ("mmoe", "mdl"): ((64.33, 63.00, 66.16, 67.39, 65.52, 65.27), 65.28, 44.28),
        ("ple", "mdl"): ((64.02, 62.68, 66.13, 67.21, 65.62, 65.33), 65.16, 44.14),
        ("star", "mdl"): ((64.12, 62.96, 64.91, 66.32, 65.73, 64.28), 64.72, 44.68),
        ("shared_bottom", "mdmt"): ((63.32, 63.55, 65.80, 68.04, 64.45, 64.89), 65.01, 44.91),
        ("mmoe", "mdmt"): ((63.50, 64.30, 65.70, 67.88, 65.61, 66.10), 65.52, 44.20),
        ("ple", "mdmt"): ((61.86, 61.88, 63.57, 66.09, 64.45, 63.47), 64.07, 44.67),
        ("m2m", "mdmt"): ((61.29, 62.25, 60.44, 63.15, 61.75, 61.57), 61.74, 44.55),
        ("m3oe", "mdmt"): ((64.85, 65.89, 66.03, 68.31, 66.21, 66.91), 66.37, 43.76),
    },
}

DATASET_NAMES = {"movielens": "MovieLens-1M", "kuairand": "KuaiRand-Pure"}


def lookup(data: str | None, model: str, kind: str):
  """(cells, auc, logloss) x 100 of a row, or None when the paper has no such row."""
  return TABLE2.get(data or "", {}).get((model, kind))


def markdown(data: str) -> str:
  """The paper's table for `data`, in Markdown, with its source and caveats."""
  header = ["row", *COLUMNS, "AUC", "LogLoss"]
  lines = [f"**{DATASET_NAMES[data]}** (the paper, x 100)", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for key, (cells, auc, logloss) in TABLE2[data].items():
    values = [f"{v:.2f}" for v in (*cells, auc, logloss)]
    lines.append("| " + " | ".join([ROW_NAMES[key], *values]) + " |")
  return "\n".join(lines)
