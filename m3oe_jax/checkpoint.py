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
import errno
import json
import os
import shutil
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import zstandard
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from m3oe_jax import paths
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.errors import DiskFullError, MissingCheckpointError, WorkdirError
from m3oe_jax.run_identity import ADDED_FIELDS, resumable

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
          "--workdir=...`, `checkpoint.load_params`); train in a new --workdir.")
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


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: d}


def config_differences(saved: dict, current: dict) -> list[str]:
  """Fields that differ between two configs and may not change on resumption."""
  a, b = {**ADDED_FIELDS, **_flatten(saved)}, {**ADDED_FIELDS, **_flatten(current)}
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


def _is_disk_full(error: Exception | None) -> bool:
  if isinstance(error, OSError) and error.errno == errno.ENOSPC:
    return True
  text = str(error or "")
  return "No space left on device" in text or "os_error_code='28'" in text


def free_bytes(folder: epath.Path) -> int | None:
  if paths.is_url(folder):
    return None
  try:
    return shutil.disk_usage(folder).free
  except OSError:
    return None


def _folder_bytes(folder: epath.Path) -> int:
  """The bytes of the files under a local folder (0 for a URL)."""
  if paths.is_url(folder):
    return 0
  total = 0
  for parent, _, files in os.walk(folder):
    for name in files:
      try:
        total += os.lstat(os.path.join(parent, name)).st_size
      except OSError:
        pass
  return total


def mib(size: int | None) -> str:
  return "an unknown amount" if size is None else f"{size / 2**20:.1f} MiB"


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
                                   _folder_bytes(self.root / which / str(step)))

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
    if _is_disk_full(error):
      return self._disk_full(which, step, self._checkpoint_bytes)
    cause = f" ({_brief(error)})" if error is not None else " (see the log above)"
    return WorkdirError(f"step {step} could not be written to {self.root / which}{cause}. "
                        f"{self.kept_description()} Fix the storage and rerun the same "
                        "command to resume.")

  def _disk_full(self, which: str, step: int, needed: int) -> DiskFullError:
    return DiskFullError(
        f"no space left to save step {step} to {self.root / which}: "
        f"{mib(free_bytes(self.root))} free, about {mib(needed)} needed. "
        f"{self.kept_description()} Free space (or move the workdir to a larger disk) and "
        "rerun the same command to resume.")

  def _check_space(self, which: str, step: int) -> None:
    """Refuses a save that cannot fit beside the saves still being written, before
    orbax starts it (a save that fails half-way is messier to clean up)."""
    free, needed = free_bytes(self.root), self._checkpoint_bytes * (1 + len(self._in_flight))
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


# Compressed bytes fetched per read while streaming a chunk into its array.
_READ_PIECE_BYTES = 1 << 20


def _value_piece(kvstore, key: str, start: int) -> bytes | None:
  """Up to _READ_PIECE_BYTES of a stored value from byte `start` (b"" past its
  end), or None if there is no such value."""
  try:
    result = kvstore.read(key, byte_range=slice(start, start + _READ_PIECE_BYTES)).result()
  except ValueError:  # OUT_OF_RANGE: the value ends within this piece
    result = kvstore.read(key, byte_range=slice(start, None)).result()
  return result.value if result.state == "value" else None


def _unzstd_chunk_into(kvstore, key: str, out: np.ndarray) -> bool:
  """Fills the contiguous array `out` with the chunk stored under `key` (one zstd
  frame), fetching and decompressing one piece at a time. False if the chunk is
  missing or does not decode to exactly `out`'s bytes."""
  target = out.reshape(-1).view(np.uint8)
  frame = zstandard.ZstdDecompressor().decompressobj()
  start = written = 0
  while not frame.eof:
    piece = _value_piece(kvstore, key, start)
    if not piece:
      return False
    start += len(piece)
    try:
      data = frame.decompress(piece)
    except zstandard.ZstdError:
      return False
    if written + len(data) > target.size:
      return False
    target[written:written + len(data)] = np.frombuffer(data, np.uint8)
    written += len(data)
  return written == target.size and not frame.unused_data and (
      _value_piece(kvstore, key, start) == b"")


def _stream_array(store) -> np.ndarray | None:
  """The whole array of an opened zarr (v2) tensorstore whose chunks are zstd
  frames, each chunk decompressed straight into the result, so that no chunk's
  compressed bytes are held whole; None for any other layout (the caller then
  lets tensorstore read it). The result is 64-byte
  aligned, which lets jax use it in place on a CPU device."""
  spec = store.spec().to_json()
  meta = spec.get("metadata", {})
  dtype = np.dtype(store.dtype.numpy_dtype)
  if (spec.get("driver") != "zarr" or (meta.get("compressor") or {}).get("id") != "zstd"
      or meta.get("order") != "C" or meta.get("filters") or meta.get("dtype") != dtype.str):
    return None
  shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
  size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(size + 64, np.uint8)
  start = -raw.ctypes.data % 64
  out = raw[start:start + size].view(dtype).reshape(shape)
  separator = meta.get("dimension_separator", ".")
  scratch = None  # one decoded chunk, for chunks that are not a run of whole rows of `out`
  for index in np.ndindex(*(-(-s // c) for s, c in zip(shape, chunks))):
    key = separator.join(map(str, index)) if shape else "0"
    region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))
    if not shape or (chunks[1:] == shape[1:] and region[0].stop - region[0].start == chunks[0]):
      if not _unzstd_chunk_into(store.kvstore, key, out[region] if shape else out.reshape(1)):
        return None
    else:
      scratch = np.empty(chunks, dtype) if scratch is None else scratch
      if not _unzstd_chunk_into(store.kvstore, key, scratch):
        return None
      out[region] = scratch[tuple(slice(0, r.stop - r.start) for r in region)]
  out.flags.writeable = False
  return out


def _read_to_device(metadata, use_zarr3: bool, device):
  """The arrays described by a tree of orbax ArrayMetadata, on `device`, read one
  at a time (see _stream_array)."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  leaves, treedef = jax.tree.flatten(metadata)
  if not leaves:
    return metadata
  use_ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(leaves[0].directory)
  context = ocp.type_handlers.get_ts_context(use_ocdbt=use_ocdbt)
  opening = [ts.open(ocp.type_handlers.get_json_tspec_read(
      ocp.type_handlers.ParamInfo(name=leaf.name, parent_dir=leaf.directory,
                                  is_ocdbt_checkpoint=use_ocdbt, use_zarr3=use_zarr3,
                                  ts_context=context),
      use_ocdbt=use_ocdbt), open=True, context=context) for leaf in leaves]
  arrays = []
  for leaf, future in zip(leaves, opening):
    store = future.result()
    host = _stream_array(store)
    if host is None:
      host = np.asarray(store.read().result())
    if host.shape != tuple(leaf.shape) or host.dtype != leaf.dtype:
      raise WorkdirError(f"{leaf.directory}: the array {leaf.name} holds {host.dtype}"
                         f"{list(host.shape)}, its metadata says {leaf.dtype}{list(leaf.shape)}; "
                         "the checkpoint is damaged. Load another step or another checkpoint.")
    arrays.append(jax.device_put(host, device, may_alias=True))
    del host
  return jax.tree.unflatten(treedef, arrays)


def load_params(workdir: str | epath.PathLike, which: str = "best", step: int | None = None,
                shardings=None):
  """Variables (`params`, `batch_stats`), schema and config of a run, on one
  device, without its mesh.

  For notebooks: `variables, schema, config = load_params(workdir)` then
  `build_model(config.model, schema).apply(variables, batch)`. Any
  mesh, device count or process count may have written the checkpoint. `step`
  picks one of the kept `which` checkpoints (default: the newest).

  Only `params` and `batch_stats` are read: the optimizer moments and the step
  stay on disk. Onto one device, each array is decompressed chunk by chunk
  straight into its own buffer (which a CPU device then uses in place), so a
  load peaks at about 1.14 times the variables' bytes for a 98 MiB table and 1.03
  for a 489 MiB one (benchmarks/bench_load_params.py; the excess is about 13 MiB
  whatever the size), against two for orbax's restore of the same
  arrays and six for a whole-state restore. A layout other than what
  `CheckpointStore` writes is read whole by tensorstore (about twice its bytes).

  `shardings` (for `m3oe_jax.evaluate` on a mesh): a function from the tree of
  `jax.ShapeDtypeStruct`s of the variables to lay out to a matching tree of
  shardings; the arrays are then restored by orbax (each process reads its
  shards). By default every array goes to this process's first device.
  """
  root = paths.resolve(workdir) / "checkpoints"
  if which not in ("best", "latest"):
    raise ValueError(f"which={which!r}: expected 'best' or 'latest'")
  if not paths.exists(root / which):
    raise MissingCheckpointError(f"no {which} checkpoint under {root} (no such directory); "
                                 "check the workdir, or train first")
  if step is not None:
    return _load_step(root, which, step, shardings)
  return read_newest(workdir, which, lambda s: _load_step(root, which, s, shardings))[1]


def saved_steps(workdir: str | epath.PathLike, which: str) -> list[int]:
  """The complete steps of `which` in a workdir, oldest first (orbax's temporary
  folders of a save in progress are not complete steps)."""
  folder = paths.resolve(workdir) / "checkpoints" / which
  try:
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
  except FileNotFoundError:
    return []


def read_newest(workdir: str | epath.PathLike, which: str, read, attempts: int = 8):
  """(step, read(step)) for the newest complete step of `which`.

  A trainer running in the workdir saves new steps and prunes older ones: a
  read that fails while the folder's steps changed (its step, or one orbax
  lists beside it, was being removed) is made again at the then newest step.
  Reads are checked (orbax refuses missing or truncated chunks), so a reader
  gets a whole checkpoint or an error. A failure while nothing changed is
  damage: raised."""
  for _ in range(attempts):
    kept = saved_steps(workdir, which)
    if not kept:
      raise MissingCheckpointError(
          f"no {which} checkpoint under {paths.resolve(workdir) / 'checkpoints'}; check the "
          "workdir, or train first")
    step = kept[-1]
    try:
      return step, read(step)
    except Exception:  # pylint: disable=broad-except
      if saved_steps(workdir, which) == kept:
        raise
  raise WorkdirError(f"the {which} checkpoints under {paths.resolve(workdir) / 'checkpoints'} "
                     f"were replaced {attempts} times while being read; try again")


def _load_step(root: epath.Path, which: str, step: int, shardings):
  """load_params of one step."""
  options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                         enable_async_checkpointing=False)
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(root / which, options=options, item_handlers=handlers) as mngr:
    return _load_with(mngr, root, which, step, shardings)


def _load_with(mngr, root: epath.Path, which: str, step: int, shardings):
  kept = list(mngr.all_steps())
  if step not in kept:
    raise MissingCheckpointError(f"no {which} checkpoint {step} under {root} (kept: {kept})")
  item = mngr.item_metadata(step)["state"]
  metadata = getattr(item, "tree", item)
  # Only the subtrees named here are read; an empty one (no BatchNorm) has no leaves.
  wanted = {k: metadata[k] for k in ("params", "batch_stats")
            if k in metadata and jax.tree.leaves(metadata[k])}
  if shardings is None:
    # The saved shardings name the writer's devices; every array goes to ours.
    state = _read_to_device(wanted, bool(getattr(item, "use_zarr3", False)),
                            jax.local_devices()[0])
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  else:
    shapes = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), wanted)
    target = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        shapes, shardings(shapes))
    restore_args = jax.tree.map(
        lambda leaf: ocp.ArrayRestoreArgs(sharding=leaf.sharding, global_shape=leaf.shape,
                                          dtype=leaf.dtype), target)
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                     partial_restore=True),
        meta=ocp.args.JsonRestore()))
    state, meta = restored["state"], restored["meta"]
  config = ml_collections.ConfigDict(meta["config"])
  variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
  return variables, FeatureSchema.from_dict(meta["schema"]), config
