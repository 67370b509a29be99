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
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from m3oe_jax import paths
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.errors import DiskFullError, MissingCheckpointError, WorkdirError
from m3oe_jax.run_identity import ADDED_FIELDS, flatten, resumable

# Under checkpoints/: checkpoints that failed to restore, moved aside for inspection.
DAMAGED = "damaged"


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

  @classmethod
  def from_meta(cls, meta: dict, where: str) -> "Progress":
    """The progress saved in a checkpoint's meta. A field added since that
    checkpoint was written takes its default; a field this version does not know
    is refused, since resuming would silently drop what it meant."""
    saved = dict(meta.get("progress") or {})
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise WorkdirError(
          f"{where} was written by another version of m3oe_jax: its training progress has "
          f"the fields {unknown}, which this version does not know, so training cannot "
          "resume from it. Its parameters still load (`python -m m3oe_jax.evaluate "
          "--workdir=...`, `params_io.load_params`); train in a new --workdir.")
    return cls(**saved)

  def check_step(self, step: int, steps_per_epoch: int, where: str) -> None:
    """Refuses a progress that does not account for exactly `step` training steps."""
    expected = self.epoch * steps_per_epoch + self.batch
    if step != expected:
      raise WorkdirError(
          f"{where} holds step {step}, but its progress (epoch {self.epoch}, batch "
          f"{self.batch}; {steps_per_epoch} batches per epoch with this config and data) "
          f"comes to step {expected}: the training split or the batch size is not the one "
          "of the run that wrote it. Use a new --workdir, or the original data and config.")


def config_differences(saved: dict, current: dict) -> list[str]:
  """Fields that differ between two configs and may not change on resumption."""
  a, b = {**ADDED_FIELDS, **flatten(saved)}, {**ADDED_FIELDS, **flatten(current)}
  model_names = {saved.get("model", {}).get("name"), current.get("model", {}).get("name")}
  diffs = []
  for key in sorted(set(a) | set(b)):
    if a.get(key, "<absent>") == b.get(key, "<absent>"):
      continue
    section = key.split(".")
    if (len(section) > 2 and section[0] == "model" and section[1] not in model_names
        and isinstance(current.get("model", {}).get(section[1]), dict)):
      continue  # the options of a model this run does not use
    if resumable(key):
      continue
    diffs.append(f"{key}: checkpoint has {a.get(key, '<absent>')!r}, "
                 f"config has {b.get(key, '<absent>')!r}")
  return diffs


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _brief(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def _leaf_signatures(tree) -> dict[tuple[str, ...], tuple[tuple[int, ...], str]]:
  """{path of names: (shape, dtype)} of a tree of arrays or array metadata."""
  def name(key):
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(name(k) for k in path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
          for path, leaf in leaves if hasattr(leaf, "shape")}


class CheckpointStore:
  """The latest and best checkpoints of one workdir.

  Every save is checked (orbax declines a step below the newest one without an
  error); saving a step that is already there keeps the saved one, so at every
  moment after the first save at least one complete checkpoint exists (orbax
  writes a step under a temporary name and renames it when complete).
  `restore_newest` resumes from the newest checkpoint that restores, and moves
  damaged newer ones aside to `checkpoints/damaged/`.

  `asynchronous=True`: `save` returns once the arrays are copied to host memory,
  and the files are written in the background while training goes on. Each save
  first waits for the previous one of its kind and checks that it landed; so do
  `wait()` and leaving the store's `with` block, which every writer must use.
  With several processes every save blocks: orbax's background save synchronises
  the processes from its own thread while the training steps' collectives run,
  which stalled and aborted 2-process runs on CPU.
  """

  def __init__(self, workdir: str | epath.PathLike, read_only: bool = False,
               asynchronous: bool = False):
    self.root = paths.resolve(workdir) / "checkpoints"
    self.read_only = read_only
    self.asynchronous = asynchronous and not read_only and jax.process_count() == 1
    if asynchronous and not self.asynchronous and not read_only:
      logging.info("checkpoints: saves block in a run of %d processes", jax.process_count())
    self._in_flight: dict[str, int] = {}  # which -> step saved, not yet checked
    # The size of a checkpoint: the state's bytes, then the largest one written.
    self._checkpoint_bytes = 0
    self._open()

  def __enter__(self) -> "CheckpointStore":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    """Waits for the saves in flight and releases orbax's writer threads. Leaving
    on an error, a failed save is logged rather than raised, so that the error
    that ended the run is the one reported."""
    try:
      self.wait()
    except Exception as e:  # pylint: disable=broad-except
      if exc_type is None:
        raise
      logging.error("a checkpoint written in the background failed: %s", _brief(e))
    finally:
      for mngr in (self.latest, self.best):
        try:
          mngr.close()
        except Exception as e:  # pylint: disable=broad-except  (reported by wait)
          logging.warning("closing the checkpoint manager of %s: %s", mngr.directory, _brief(e))

  def wait(self) -> None:
    """Waits until every save has been written, and checks each one landed (the
    first failure is raised once all have been waited for)."""
    failures = []
    for which in ("latest", "best"):
      try:
        self._finish(which)
      except WorkdirError as e:
        failures.append(e)
    if failures:
      raise failures[0]

  def _finish(self, which: str) -> None:
    mngr = self._manager(which)
    step = self._in_flight.pop(which, None)
    try:
      mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if step is None:
        raise
      raise self._not_saved(which, step, e) from e
    if step is not None and step not in mngr.all_steps():
      raise self._not_saved(which, step)
    if step is not None:
      self._checkpoint_bytes = max(self._checkpoint_bytes,
                                   paths.folder_bytes(self.root / which / str(step)))

  def _not_saved(self, which: str, step: int, error: Exception | None = None) -> WorkdirError:
    """Why step `step` is not among the saved ones, with its partial files removed:
    orbax declined it (the folder holds a newer step: another run's), or the write
    failed."""
    newest = self._manager(which).latest_step()
    if error is None and newest is not None and newest > step:
      return WorkdirError(
          f"step {step} was not saved to {self.root / which}, which holds step {newest} "
          "from another run. Use a new --workdir.")
    self._remove_partial(which, step)
    if paths.is_disk_full(error):
      return self._disk_full(which, step, self._checkpoint_bytes)
    cause = f" ({_brief(error)})" if error is not None else " (see the log above)"
    return WorkdirError(f"step {step} could not be written to {self.root / which}{cause}. "
                        f"{self.kept_description()} Fix the storage and rerun the same "
                        "command to resume.")

  def _disk_full(self, which: str, step: int, needed: int) -> DiskFullError:
    return DiskFullError(
        f"no space left to save step {step} to {self.root / which}: "
        f"{paths.mib(paths.free_bytes(self.root))} free, about {paths.mib(needed)} needed. "
        f"{self.kept_description()} Free space (or move the workdir to a larger disk) and "
        "rerun the same command to resume.")

  def _check_space(self, which: str, step: int) -> None:
    """Refuses a save that cannot fit beside the saves still being written, before
    orbax starts it (a save that fails half-way is messier to clean up)."""
    free, needed = paths.free_bytes(self.root), self._checkpoint_bytes * (1 + len(self._in_flight))
    if free is not None and free < needed:
      raise self._disk_full(which, step, needed)

  def kept_description(self) -> str:
    """One sentence for messages: what a rerun resumes from."""
    kept = self.checkpoints()
    if not kept:
      return "No checkpoint of this run has been saved yet."
    step, which = kept[0]
    return f"The checkpoints saved before are intact (newest: {self.root / which / str(step)})."

  def _remove_partial(self, which: str, step: int) -> None:
    """Removes what a failed save of `step` left behind (orbax's temporary folders)."""
    if self.read_only or jax.process_index() != 0:
      return
    for partial in (self.root / which).glob(f"{step}.orbax-checkpoint-tmp*"):
      try:
        partial.rmtree()
      except OSError as e:
        logging.warning("could not remove the partial checkpoint %s: %s", partial, e)

  def _open(self) -> None:
    def manager(name, keep):
      options = ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=not self.read_only, read_only=self.read_only,
          enable_async_checkpointing=self.asynchronous)
      handlers = {"state": ocp.StandardCheckpointHandler(),
                  "meta": ocp.JsonCheckpointHandler()}
      return ocp.CheckpointManager(self.root / name, options=options, item_handlers=handlers)

    self.latest = manager("latest", 2)
    self.best = manager("best", 1)

  def _manager(self, which: str):
    if which not in ("latest", "best"):
      raise ValueError(f"which={which!r}: expected 'latest' or 'best'")
    return self.latest if which == "latest" else self.best

  def save(self, which: str, state, progress: Progress, config: ml_collections.ConfigDict,
           schema: FeatureSchema, metrics: dict | None = None) -> None:
    """Saves `state` as step `state.step` of `which` and checks that it landed
    (asynchronous: starts writing it, after checking the previous save)."""
    mngr = self._manager(which)
    self._finish(which)
    step = int(jax.device_get(state.step))
    if step in mngr.all_steps():
      return  # the same training reaches the same state at the same step
    meta = {
        "progress": dataclasses.asdict(progress),
        "config": config_to_dict(config),
        "schema": schema.to_dict(),
        "metrics": metrics,
    }
    self._checkpoint_bytes = max(self._checkpoint_bytes, sum(
        x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes")))
    self._check_space(which, step)
    try:
      saved = mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # pylint: disable=broad-except
      raise self._not_saved(which, step, e) from e
    if not saved:
      raise self._not_saved(which, step)
    self._in_flight[which] = step
    if not self.asynchronous:
      self._finish(which)

  def latest_step(self, which: str = "latest") -> int | None:
    return self._manager(which).latest_step()

  def checkpoints(self) -> list[tuple[int, str]]:
    """(step, which) of every kept checkpoint, newest first; `latest` before
    `best` at the same step."""
    found = [(s, "latest") for s in self.latest.all_steps()]
    found += [(s, "best") for s in self.best.all_steps()]
    return sorted(found, key=lambda c: (c[0], c[1] == "latest"), reverse=True)

  def read_meta(self, which: str = "latest", step: int | None = None) -> dict:
    mngr = self._manager(which)
    step = mngr.latest_step() if step is None else step
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def check_compatible(self, config: ml_collections.ConfigDict, schema: FeatureSchema) -> None:
    """Refuses a workdir any of whose checkpoints (latest or best) comes from an
    incompatible config or data. A checkpoint whose meta does not read is left
    to `restore_newest`."""
    for step, which in self.checkpoints():
      try:
        meta = self.read_meta(which, step)
      except Exception:  # pylint: disable=broad-except
        continue
      problems = config_differences(meta["config"], config_to_dict(config))
      saved_schema = FeatureSchema.from_dict(meta["schema"]).model_signature()
      if saved_schema != schema.model_signature():
        problems.append(f"feature schema: checkpoint has {saved_schema}, "
                        f"data has {schema.model_signature()}")
      if problems:
        raise WorkdirError(
            f"the checkpoint {self.root / which / str(step)} comes from an incompatible "
            "run and cannot be resumed with this config:\n  " + "\n  ".join(problems)
            + "\nUse a new --workdir, or restore the original config values.")

  def _check_structure(self, which: str, step: int, abstract, where) -> None:
    """Refuses a checkpoint whose arrays have other paths, shapes or dtypes than
    the state to restore: another model, not damage."""
    metadata = self._manager(which).item_metadata(step)["state"]
    saved = _leaf_signatures(getattr(metadata, "tree", metadata))
    wanted = _leaf_signatures(abstract)
    if saved != wanted:
      differ = sorted(set(saved) ^ set(wanted)) or [
          p for p in wanted if saved.get(p) != wanted[p]]
      raise WorkdirError(
          f"{where} holds other arrays than this model's train state (first "
          f"differences: {['/'.join(p) for p in differ[:3]]}); it was written by another "
          "model or version. Use a new --workdir.")

  def restore(self, which: str, target_state, step: int | None = None):
    """(state laid out like `target_state` (shapes, shardings), Progress, meta).

    `target_state` holds arrays or jax.ShapeDtypeStructs with shardings; the
    checkpoint may come from any mesh, device count or process count.
    """
    mngr = self._manager(which)
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise MissingCheckpointError(f"no {which} checkpoint under {self.root}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    meta = restored["meta"]
    return restored["state"], Progress.from_meta(meta, self.root / which / str(step)), meta

  def restore_newest(self, target_state, steps_per_epoch: int):
    """(state, Progress, which, step) of the newest checkpoint that restores, or
    None when there is none.

    A checkpoint that fails to read (a truncated or missing file, garbage
    metadata) is skipped with a warning naming it, and moved to
    `checkpoints/damaged/` once an older one has restored. A checkpoint from
    another version, model or data is refused (WorkdirError), never skipped; so
    is a workdir none of whose checkpoints restores (all are left in place).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    damaged = []
    for step, which in self.checkpoints():
      where = self.root / which / str(step)
      try:
        meta = self.read_meta(which, step)
      except Exception as e:  # pylint: disable=broad-except
        damaged.append((which, step, f"its meta does not read ({_brief(e)})"))
        continue
      progress = Progress.from_meta(meta, where)
      progress.check_step(step, steps_per_epoch, where)
      try:
        self._check_structure(which, step, abstract, where)
        state = self._manager(which).restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))["state"]
      except WorkdirError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        damaged.append((which, step, f"its arrays do not read ({_brief(e)})"))
        continue
      for bad in damaged:
        logging.warning("skipped the damaged checkpoint %s: %s", self.root / bad[0] / str(bad[1]),
                        bad[2])
      self._move_aside(damaged)
      return state, progress, which, step
    if damaged:
      raise WorkdirError(
          f"no checkpoint under {self.root} restores:\n  " + "\n  ".join(
              f"{self.root / w / str(s)}: {why}" for w, s, why in damaged)
          + "\nThey are left in place for inspection. Put back intact copies, or move "
          f"{self.root} away to train from the start.")
    return None

  def _move_aside(self, damaged: list[tuple[str, int, str]]) -> None:
    if not damaged or self.read_only:
      return
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
      for which, step, _ in damaged:
        target = self.root / DAMAGED / f"{which}-{step}-{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        paths.move(self.root / which / str(step), target)
        logging.warning("moved the damaged checkpoint %s to %s", self.root / which / str(step),
                        target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("m3oe_jax: damaged checkpoints moved aside")
    self._open()
