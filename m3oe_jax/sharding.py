"""Device mesh, shardings of the train state and batches, and host-to-device transfer.

The mesh has axes ('data', 'model'). Batches are split over both axes, so every
device runs the dense layers on its own 1/(data x model) of the rows. Parameters
and optimizer states are replicated, except embedding tables (and their Adam
moments), which are row-sharded over `config.mesh.embedding_axis` when it names
an axis: each device then holds 1/N of every table. Tables are padded to a
multiple of `config.model.embed_rows_multiple` rows so that they split evenly.
The mesh uses Auto axis types, so XLA partitions a lookup in a table row-sharded
over 'model' without annotations in the model: the devices of a model group
all-gather their ids, each gathers the ids that fall in its rows, and an
all-reduce over 'model' (sliced back to each device's rows) assembles them;
no table is ever gathered whole.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from m3oe_jax.errors import ConfigError, is_whole

AXES = ("data", "model")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses, before any data is prepared, mesh settings that fit no devices:
  axis sizes, an unknown embedding axis, a negative memory budget (the device
  count is checked by `make_mesh`)."""
  for name, least in (("model", 1), ("data", -1)):
    value = config[name]
    if not is_whole(value) or value < least or value == 0:
      raise ConfigError(f"config.mesh.{name} must be a whole number >= 1"
                        + (" or -1 (every device not used by the other axes)"
                           if least == -1 else "") + f", got {value!r}")
  if config.embedding_axis and config.embedding_axis not in AXES:
    raise ConfigError(f"config.mesh.embedding_axis={config.embedding_axis!r}; "
                      f"expected '' or one of {AXES}")
  budget = config.get("device_memory_budget_bytes", 0)
  if not is_whole(budget) or budget < 0:
    raise ConfigError("config.mesh.device_memory_budget_bytes must be a whole number >= 0 "
                      f"(0: no check), got {budget!r}")


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
  check_config(config)
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  data, model = int(config.data), int(config.model)
  if data == -1:
    if n % model:
      raise ConfigError(f"config.mesh.model={model} does not divide the {n} devices")
    data = n // model
  if data < 1 or data * model != n:
    raise ConfigError(
        f"config.mesh: data={data} x model={model} = {data * model} devices, "
        f"but {n} are available; the axis sizes must multiply to the device count")
  mesh_devices = np.asarray(devices).reshape(data, model)
  _check_processes(mesh_devices)
  return Mesh(mesh_devices, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def _check_processes(mesh_devices: np.ndarray) -> None:
  """Each process feeds one contiguous slice of every batch (pipeline's process
  slices), and the batch is split over the devices in mesh order (data-major), so
  a process must own whole rows of the mesh, in process order: a model-axis group
  across processes would interleave their slices."""
  owners = np.vectorize(lambda d: d.process_index)(mesh_devices)       # [data, model]
  if np.all(owners == owners.flat[0]):
    return
  if np.any(owners != owners[:, :1]) or np.any(np.diff(owners[:, 0]) < 0):
    local = int(np.sum(owners == owners.flat[0]))
    raise ConfigError(
        f"config.mesh.model={mesh_devices.shape[1]} spans devices of several processes; "
        f"with {jax.process_count()} processes of {local} devices each, config.mesh.model "
        f"must divide {local} so that every process holds whole rows of the data axis")


def check_table_rows(rows_multiple: int, mesh: Mesh, embedding_axis: str) -> None:
  if embedding_axis and rows_multiple % mesh.shape[embedding_axis]:
    raise ConfigError(
        f"config.mesh.embedding_axis={embedding_axis!r} splits tables "
        f"{mesh.shape[embedding_axis]} ways, which must divide "
        f"config.model.embed_rows_multiple={rows_multiple} (tables are padded to a "
        "multiple of it); raise embed_rows_multiple to a multiple of the axis size")


def check_batch_size(batch_size: int, mesh: Mesh, name: str) -> None:
  data, model = mesh.shape["data"], mesh.shape["model"]
  if batch_size % (data * model) or batch_size % jax.process_count():
    raise ConfigError(
        f"config.{name}={batch_size} must be divisible by the mesh's data x model = "
        f"{data} x {model} = {data * model} devices (every device takes an equal share "
        f"of the rows) and by the process count {jax.process_count()}")


BATCH_AXES = ("data", "model")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows split over every device, data-major: device (i, j) holds share
  i * model + j of the batch."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _is_table(path, leaf, table_scopes) -> bool:
  names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  return any(scope in names for scope in table_scopes) and getattr(leaf, "ndim", 0) == 2


def state_shardings(abstract_state, mesh: Mesh, embedding_axis: str,
                    table_scopes: tuple[str, ...] = ("embedding",)):
  """A sharding for every leaf of a train state (or any tree holding params):
  the [rows, width] leaves under a scope named in `table_scopes` (the model's
  embedding tables and their optimizer moments) row-sharded over
  `embedding_axis`, everything else replicated."""

  def for_leaf(path, leaf):
    if embedding_axis and _is_table(path, leaf, table_scopes):
      return NamedSharding(mesh, P(embedding_axis, None))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(for_leaf, abstract_state)


def check_tables_found(abstract_params, embedding_axis: str, table_scopes: tuple[str, ...],
                       model_name: str) -> None:
  """Refuses a table axis that would shard nothing (the model names its tables
  differently, or has none) instead of silently replicating every table."""
  if not embedding_axis:
    return
  found = []
  jax.tree_util.tree_map_with_path(
      lambda path, leaf: found.append(path) if _is_table(path, leaf, table_scopes) else None,
      abstract_params)
  if not found:
    raise ConfigError(
        f"config.mesh.embedding_axis={embedding_axis!r} row-shards embedding tables, but "
        f"model {model_name!r} has no [rows, width] parameter under {table_scopes}; set "
        "config.mesh.embedding_axis='' or declare the model's tables in its TABLE_SCOPES")


def bytes_per_device(abstract_tree, shardings) -> int:
  """The bytes one device holds of a tree laid out by `shardings` (the largest)."""
  total = 0
  for leaf, leaf_sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    total += int(np.prod(leaf_sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
  return total


def compiled_bytes_per_device(compiled) -> int | None:
  """Device memory an executable needs while it runs: arguments, outputs not
  aliased to (donated) arguments, and temporaries; None where XLA can't say."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes
          - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a global batch, split over its devices (`batch_sharding`)."""
  # One call for all columns: on one process, a single batched transfer.
  return jax.make_array_from_process_local_data(batch_sharding(mesh), dict(batch))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches stacked on a new leading axis [k, rows, ...], each laid out as
  `batch_sharding`."""
  return NamedSharding(mesh, P(None, *batch_sharding(mesh).spec))


def put_stacked_batch(stacked: dict, mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of k global batches, stacked [k, rows, ...], on the mesh
  (`stacked_batch_sharding`), all columns in one call. Columns already on a
  device (device placement) are laid out there."""
  return jax.make_array_from_process_local_data(stacked_batch_sharding(mesh), dict(stacked))
