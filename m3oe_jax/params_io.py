"""Reading a run's parameters from its checkpoints, without its mesh or trainer.

`load_params` (for notebooks, `evaluate` and `export`) reads the variables of one
step; `read_newest` reads the newest step of a workdir that a trainer may be
pruning at the same time. Onto one device, each array is decompressed chunk by
chunk straight into its own buffer (TensorStore's zarr chunks are zstd frames).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import zstandard
from etils import epath

from m3oe_jax import losses, paths
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.errors import ConfigError, MissingCheckpointError, WorkdirError


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
    except ConfigError:
      raise  # the reader's own settings, whatever the trainer does
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
  variables = {"params": losses.model_params(state["params"]),
               "batch_stats": state.get("batch_stats", {})}
  return variables, FeatureSchema.from_dict(meta["schema"]), config
