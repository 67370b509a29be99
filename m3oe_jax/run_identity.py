"""The hash of a run's config, which ties a run's results to the run.

The trainer writes it into `metrics.json` (`config_hash`), the sweep into
`sweep.json` for each of its runs, and the report checks a run's metrics.json
against them and against the config in the run's own checkpoints, so that a
metrics.json copied into another run's folder is not counted. What may change
when a run resumes (RESUMABLE_CHANGES, the data's folders and files, the options
of the models the run does not use) is left out, so a resumed run keeps its
hash. Standard library only: the report uses it without JAX.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Config fields that may change between a run and its resumption.
RESUMABLE_CHANGES = ("num_epochs", "patience", "log_every_steps", "checkpoint_every_steps",
                     "eval_batch_size", "divergence_factor", "mesh.", "steps_per_call",
                     "prefetch_batches", "compilation_cache_dir", "async_checkpointing",
                     "setup_for_model")
# Fields added to the config since checkpoints were first written, and the value a
# checkpoint without them was trained with.
ADDED_FIELDS = {"model.dtype": "float32", "optimizer.task_weights": [],
                "optimizer.task_weighting": "fixed", "init_weights": "", "train_order": ""}
# Added fields left out of the hash at their ADDED_FIELDS value, so the runs written
# before them keep their hashes.
HASHED_IF_SET = ("optimizer.task_weights", "optimizer.task_weighting", "init_weights",
                 "train_order")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  """{"a.b.c": leaf} of nested dicts."""
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: d}


def resumable(key: str) -> bool:
  """Whether a flattened config field may change on resumption."""
  return (any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_CHANGES)
          or (key.startswith("data.") and key.endswith(("_dir", "_path"))))


def _plain(value):
  if isinstance(value, float) and value.is_integer():
    return int(value)  # 1.0 and 1 name the same setting
  if isinstance(value, list):
    return [_plain(v) for v in value]
  return value


def identity(config: dict) -> dict[str, Any]:
  """The flattened config without the fields that do not change what the run computes."""
  model = config.get("model") if isinstance(config.get("model"), dict) else {}
  out = {}
  for key, value in {**ADDED_FIELDS, **flatten(config)}.items():
    parts = key.split(".")
    if (len(parts) > 2 and parts[0] == "model" and parts[1] != model.get("name")
        and isinstance(model.get(parts[1]), dict)):
      continue  # the options of a model this run does not use
    if key in HASHED_IF_SET and _plain(value) == _plain(ADDED_FIELDS[key]):
      continue
    if not resumable(key):
      out[key] = _plain(value)
  return out


def config_hash(config) -> str:
  """sha256 of the canonical JSON of `identity(config)`; `config` is a ConfigDict or
  the dict a checkpoint stores."""
  if hasattr(config, "to_json_best_effort"):
    config = json.loads(config.to_json_best_effort())
  text = json.dumps(identity(config), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()
