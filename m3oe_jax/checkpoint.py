"""Orbax checkpoints of the whole training run: the latest and the best.

Layout under the workdir:
  checkpoints/latest/<step>/{state,meta}   the last two saves (resume from here)
  checkpoints/best/<step>/{state,meta}     the save with the best validation metric

`state` is the TrainState (parameters, both optimizer states, step); `meta` is
JSON: the training progress (data position, architecture-step position,
early-stopping state), the config and the feature schema. Saves are atomic (orbax
writes to a temporary directory and renames it), so a process killed at any
moment leaves the previous checkpoints intact.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from m3oe_jax.data.schema import FeatureSchema

# Config fields that may change between a run and its resumption.
RESUMABLE_CHANGES = ("num_epochs", "patience", "log_every_steps", "checkpoint_every_steps",
                     "eval_batch_size", "mesh.")


@dataclasses.dataclass
class Progress:
  """Host-side training position; everything needed beside the TrainState."""
  epoch: int = 0                 # epoch in progress
  batch: int = 0                 # next batch index within that epoch
  arch_steps: int = 0            # architecture steps taken (position of their stream)
  best_metric: float | None = None
  best_step: int | None = None
  best_epoch: int | None = None
  epochs_without_improvement: int = 0
  stopped_early: bool = False  # no better validation metric for `patience` epochs


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: d}


def config_differences(saved: dict, current: dict) -> list[str]:
  """Fields that differ between two configs and may not change on resumption."""
  a, b = _flatten(saved), _flatten(current)
  model_names = {saved.get("model", {}).get("name"), current.get("model", {}).get("name")}
  diffs = []
  for key in sorted(set(a) | set(b)):
    if a.get(key, "<absent>") == b.get(key, "<absent>"):
      continue
    section = key.split(".")
    if (len(section) > 2 and section[0] == "model" and section[1] not in model_names
        and isinstance(current.get("model", {}).get(section[1]), dict)):
      continue  # the options of a model this run does not use
    if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_CHANGES):
      continue
    if key.startswith("data.") and key.endswith(("_dir", "_path")):
      continue
    diffs.append(f"{key}: checkpoint has {a.get(key, '<absent>')!r}, "
                 f"config has {b.get(key, '<absent>')!r}")
  return diffs


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


class CheckpointStore:
  """The latest and best checkpoints of one workdir."""

  def __init__(self, workdir: str | epath.PathLike, read_only: bool = False):
    root = epath.Path(workdir) / "checkpoints"
    self.root = root

    def manager(name, keep):
      options = ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=not read_only, read_only=read_only,
          enable_async_checkpointing=False)
      handlers = {"state": ocp.StandardCheckpointHandler(),
                  "meta": ocp.JsonCheckpointHandler()}
      return ocp.CheckpointManager(root / name, options=options, item_handlers=handlers)

    self.latest = manager("latest", 2)
    self.best = manager("best", 1)

  def save(self, which: str, state, progress: Progress, config: ml_collections.ConfigDict,
           schema: FeatureSchema, metrics: dict | None = None) -> None:
    mngr = self.latest if which == "latest" else self.best
    step = int(jax.device_get(state.step))
    if step in mngr.all_steps():
      mngr.delete(step)
    meta = {
        "progress": dataclasses.asdict(progress),
        "config": config_to_dict(config),
        "schema": schema.to_dict(),
        "metrics": metrics,
    }
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()

  def latest_step(self, which: str = "latest") -> int | None:
    return (self.latest if which == "latest" else self.best).latest_step()

  def read_meta(self, which: str = "latest", step: int | None = None) -> dict:
    mngr = self.latest if which == "latest" else self.best
    step = mngr.latest_step() if step is None else step
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def check_compatible(self, config: ml_collections.ConfigDict, schema: FeatureSchema) -> None:
    """Refuses a workdir whose checkpoints come from an incompatible config or data."""
    step = self.latest.latest_step()
    if step is None:
      return
    meta = self.read_meta("latest", step)
    problems = config_differences(meta["config"], config_to_dict(config))
    saved_schema = FeatureSchema.from_dict(meta["schema"]).model_signature()
    if saved_schema != schema.model_signature():
      problems.append(f"feature schema: checkpoint has {saved_schema}, "
                      f"data has {schema.model_signature()}")
    if problems:
      raise ValueError(
          f"the checkpoints in {self.root} (step {step}) come from an incompatible "
          "run and cannot be resumed with this config:\n  " + "\n  ".join(problems)
          + "\nUse a new --workdir, or restore the original config values.")

  def restore(self, which: str, target_state, step: int | None = None):
    """(state laid out like `target_state` (shapes, shardings), Progress, meta).

    `target_state` holds arrays or jax.ShapeDtypeStructs with shardings; the
    checkpoint may come from any mesh, device count or process count.
    """
    mngr = self.latest if which == "latest" else self.best
    step = mngr.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    meta = restored["meta"]
    return restored["state"], Progress(**meta["progress"]), meta


def load_params(workdir: str | epath.PathLike, which: str = "best", step: int | None = None,
                shardings=None):
  """Variables (`params`, `batch_stats`), schema and config of a run, on one
  device, without its mesh.

  For notebooks: `variables, schema, config = load_params(workdir)` then
  `build_model(config.model, schema).apply(variables, batch)`. Any
  mesh, device count or process count may have written the checkpoint. `step`
  picks one of the kept `which` checkpoints (default: the newest).

  Only `params` and `batch_stats` are read (an orbax partial restore): the
  optimizer moments and the step stay on disk. A load peaks at about twice the
  variables' bytes (orbax's read buffer beside the restored arrays;
  benchmarks/bench_load_params.py), against six times for a whole-state restore.

  `shardings` (for `m3oe_jax.evaluate` on a mesh): a function from the tree of
  `jax.ShapeDtypeStruct`s of the variables to lay out to a matching tree of
  shardings; by default every array goes to this process's first device.
  """
  root = epath.Path(workdir) / "checkpoints"
  if which not in ("best", "latest"):
    raise ValueError(f"which={which!r}: expected 'best' or 'latest'")
  if not (root / which).exists():
    raise FileNotFoundError(f"no {which} checkpoint under {root} (no such directory)")
  options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                         enable_async_checkpointing=False)
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  mngr = ocp.CheckpointManager(root / which, options=options, item_handlers=handlers)
  kept = list(mngr.all_steps())
  step = mngr.latest_step() if step is None else step
  if step is None or step not in kept:
    raise FileNotFoundError(f"no {which} checkpoint{'' if step is None else f' {step}'} "
                            f"under {root} (kept: {kept})")
  metadata = mngr.item_metadata(step)["state"]
  metadata = getattr(metadata, "tree", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  # The saved shardings name the writer's devices; lay every array out on ours.
  # Only the subtrees named here are read; an empty one (no BatchNorm) has no leaves.
  wanted = {k: metadata[k] for k in ("params", "batch_stats")
            if k in metadata and jax.tree.leaves(metadata[k])}
  target = jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), wanted)
  if shardings is not None:
    target = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        target, shardings(target))
  restore_args = jax.tree.map(
      lambda leaf: ocp.ArrayRestoreArgs(sharding=leaf.sharding, global_shape=leaf.shape,
                                        dtype=leaf.dtype), target)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                   partial_restore=True),
      meta=ocp.args.JsonRestore()))
  mngr.close()
  meta = restored["meta"]
  config = ml_collections.ConfigDict(meta["config"])
  state = restored["state"]
  variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
  return variables, FeatureSchema.from_dict(meta["schema"]), config
