# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Evaluate a checkpoint
#
# Loads the best checkpoint of a run on one CPU device (`params_io.load_params`:
# parameters and BatchNorm statistics only, no mesh, no optimizer), scores a split,
# and shows the per-(domain, task) metrics, a reliability plot per task, M3oE's gates
# and fusion weights, the predictions of a second run beside this one's, and how to
# score rows of raw ids through the stored vocabularies.
#
# Edit the paths below, or set `M3OE_NOTEBOOK_WORKDIR` (and
# `M3OE_NOTEBOOK_COMPARE_WORKDIR` for the comparison run). The source of this
# notebook is `notebooks/evaluate_checkpoint.py` (jupytext); regenerate the
# `.ipynb` with `jupytext --to ipynb notebooks/evaluate_checkpoint.py`.

# %%
import os

WORKDIR = os.environ.get("M3OE_NOTEBOOK_WORKDIR", "/tmp/m3oe_synthetic")
COMPARE_WORKDIR = os.environ.get("M3OE_NOTEBOOK_COMPARE_WORKDIR", "")  # "" for none
SPLIT = os.environ.get("M3OE_NOTEBOOK_SPLIT", "test")
WHICH = "best"

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # one CPU device is all this needs

# %%
import json
import pathlib

import jax
import matplotlib.pyplot as plt
import numpy as np

from m3oe_jax import export, metrics, step
from m3oe_jax.params_io import load_params
from m3oe_jax.data import load_dataset
from m3oe_jax.models import build_model
from m3oe_jax.models.base import per_domain_means

# %% [markdown]
# ## Load the variables and the data

# %%
variables, schema, config = load_params(WORKDIR, WHICH)
model = build_model(config.model, schema)
print(f"model {config.model.name}, data {config.data.name}, "
      f"domains {schema.domain_names}, tasks {schema.task_names}")
print("variables on", {d for x in jax.tree.leaves(variables) for d in x.devices()})
dataset = load_dataset(config.data, config.get("variant"))
assert dataset.schema.model_signature() == schema.model_signature(), "data changed"

# %%
eval_step = jax.jit(step.make_eval_step(model))


def score(variables, source, batch_size=4096):
  """Probabilities [N, T], labels, domains and per-example diagnostics of a split."""
  probs, labels, domain, per_example, scalars = [], [], [], {}, {}
  for start in range(0, len(source), batch_size):
    batch = source.take(np.arange(start, min(start + batch_size, len(source))))
    batch = {k: np.asarray(v) for k, v in batch.items()}
    p, aux = eval_step(variables, {**batch, "mask": np.ones(len(batch["domain"]), np.float32)})
    probs.append(np.asarray(p))
    labels.append(batch["labels"])
    domain.append(batch["domain"])
    for name, value in aux.items():
      if isinstance(value, dict):
        scalars[name] = {k: float(v) for k, v in value.items()}
      else:
        per_example.setdefault(name, []).append(np.asarray(value))
  return (np.concatenate(probs), np.concatenate(labels), np.concatenate(domain),
          {k: np.concatenate(v) for k, v in per_example.items()}, scalars)


probs, labels, domain, per_example, scalars = score(variables, dataset.splits[SPLIT])
result = metrics.evaluate_predictions(probs, labels, domain, schema.domain_names,
                                      schema.task_names)
print(metrics.format_table(result, f"{SPLIT} ({WHICH} checkpoint of {WORKDIR})"))

# %% [markdown]
# ## Calibration
#
# Per task: the mean predicted probability against the observed positive rate in
# ten equal-width bins of the prediction (the diagonal is perfect calibration).

# %%
def reliability(p, y, bins=10):
  edges = np.linspace(0, 1, bins + 1)
  which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
  rows = [(p[which == b].mean(), y[which == b].mean(), int((which == b).sum()))
          for b in range(bins) if np.any(which == b)]
  return np.array(rows).reshape(-1, 3)


fig, axes = plt.subplots(1, schema.num_tasks, figsize=(4 * schema.num_tasks, 4),
                         squeeze=False)
for t, task in enumerate(schema.task_names):
  ax = axes[0, t]
  curve = reliability(probs[:, t], labels[:, t])
  ax.plot([0, 1], [0, 1], "k--", lw=1)
  ax.plot(curve[:, 0], curve[:, 1], "o-")
  ax.set(title=f"{task}", xlabel="mean predicted", ylabel="observed rate",
         xlim=(0, 1), ylim=(0, 1))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Gates and fusion weights (M3oE)
#
# The mean gate weight of each shared expert per (domain, task) on this split (the
# model's `aux["gates"]`), the fusion weights after their sigmoid, and their
# history over the epochs from `metrics.jsonl` (one line per epoch, the last line of
# an epoch counting).

# %%
history = []
jsonl = pathlib.Path(WORKDIR) / "metrics.jsonl"
if jsonl.exists():
  by_epoch = {}
  for line in jsonl.read_text().splitlines():
    if line.strip():
      record = json.loads(line)
      by_epoch[record["epoch"]] = record
  history = [by_epoch[e] for e in sorted(by_epoch)]

if "gates" in per_example:
  gates = per_domain_means(per_example["gates"], domain, schema.num_domains)  # [D, T, E]
  fig, axes = plt.subplots(1, schema.num_tasks, figsize=(4 * schema.num_tasks, 3),
                           squeeze=False)
  for t, task in enumerate(schema.task_names):
    ax = axes[0, t]
    image = ax.imshow(gates[:, t, :], vmin=0, vmax=1, cmap="viridis")
    ax.set(title=f"gates: {task}", xlabel="shared expert", ylabel="domain",
           yticks=range(schema.num_domains), yticklabels=schema.domain_names)
    fig.colorbar(image, ax=ax)
  fig.tight_layout()
  plt.show()
else:
  print(f"model {config.model.name} has no gates")
if "fusion_weights" in scalars:
  print("fusion weights:", {k: round(v, 4) for k, v in scalars["fusion_weights"].items()})
fusion_history = [(r["epoch"], r["diagnostics"]["fusion_weights"]) for r in history
                  if "fusion_weights" in r.get("diagnostics", {})]
if fusion_history:
  fig, ax = plt.subplots(figsize=(5, 3))
  for name in fusion_history[0][1]:
    ax.plot([e for e, _ in fusion_history], [w[name] for _, w in fusion_history], "o-",
            label=name)
  ax.set(xlabel="epoch", ylabel="sigmoid(weight)", title="fusion weights (validation)")
  ax.legend()
  plt.show()
  print("gates [D][T][E] of the last epoch (validation):",
        np.round(np.asarray(history[-1]["diagnostics"].get("gates", [])), 3).tolist())

# %% [markdown]
# ## Two runs side by side
#
# Another run on the same data (another seed, model or setting): its metrics beside
# this run's and a scatter of the two runs' probabilities per task.

# %%
if COMPARE_WORKDIR:
  other_variables, other_schema, other_config = load_params(COMPARE_WORKDIR, WHICH)
  assert other_schema.model_signature() == schema.model_signature(), "different data"
  other_model = build_model(other_config.model, other_schema)
  other_step = jax.jit(step.make_eval_step(other_model))
  source = dataset.splits[SPLIT]
  other = np.concatenate([
      np.asarray(other_step(other_variables, {
          **(b := source.take(np.arange(s, min(s + 4096, len(source))))),
          "mask": np.ones(len(b["domain"]), np.float32)})[0])
      for s in range(0, len(source), 4096)])
  other_result = metrics.evaluate_predictions(other, labels, domain, schema.domain_names,
                                              schema.task_names)
  print(f"{'pair':<24} {'this AUC':>9} {'other AUC':>9}")
  for pair, m in result["pairs"].items():
    a, b = m["auc"], other_result["pairs"][pair]["auc"]
    print(f"{pair:<24} {a if a is None else round(a, 4)!s:>9} "
          f"{b if b is None else round(b, 4)!s:>9}")
  fig, axes = plt.subplots(1, schema.num_tasks, figsize=(4 * schema.num_tasks, 4),
                           squeeze=False)
  for t, task in enumerate(schema.task_names):
    ax = axes[0, t]
    ax.scatter(probs[:, t], other[:, t], s=4, alpha=0.4, c=domain, cmap="tab10")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(title=task, xlabel=f"{config.model.name} ({pathlib.Path(WORKDIR).name})",
           ylabel=f"{other_config.model.name} ({pathlib.Path(COMPARE_WORKDIR).name})")
  fig.tight_layout()
  plt.show()
else:
  print("set M3OE_NOTEBOOK_COMPARE_WORKDIR to compare two runs")

# %% [markdown]
# ## Scoring your own rows
#
# Raw values in, probabilities out. `export.serving_schema` reads the vocabularies
# the data was prepared with (the same content as the `schema.json` that
# `python -m m3oe_jax.export` writes): each raw sparse value maps to its model id,
# an unseen one to the out-of-vocabulary id 0; dense values get the data's
# transform and min-max scaling; the domain is given by name. For synthetic data
# the ids already are model ids.

# %%
serving = export.serving_schema(config, schema, which=WHICH, step=None)
print("ids:", serving["ids"], "| OOV id:", serving["oov_id"])


def first_raw_value(feature):
  vocabulary = feature["vocabulary"]
  return next(iter(vocabulary)) if vocabulary else 1


my_rows = [
    {**{f["name"]: first_raw_value(f) for f in serving["sparse_features"]},
     **{f["name"]: 25.0 for f in serving["dense_features"]}, "domain": schema.domain_names[0]},
]
if serving["ids"] == "vocabulary":  # values never seen in training: the OOV id (domain kept)
  my_rows.append({**{f["name"]: "never-seen" for f in serving["sparse_features"]},
                  **{f["name"]: 25.0 for f in serving["dense_features"]},
                  "domain": schema.domain_names[-1]})
batch = export.encode_rows(serving, my_rows)
predict = jax.jit(export.make_predict(model, variables))
my_probs = np.asarray(predict(batch))
for row, ids, p in zip(my_rows, batch["sparse"], my_probs):
  print({k: row[k] for k in list(row)[:3]}, "-> ids", ids.tolist(), "->",
        dict(zip(schema.task_names, np.round(p, 4).tolist())))
