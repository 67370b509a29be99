"""Evaluates a run's checkpoint on any mesh: `python -m m3oe_jax.evaluate --workdir=DIR`.

Reads the config and feature schema saved with the checkpoint, prepares the same
data, restores only the variables (parameters and BatchNorm statistics; never
the optimizer states, see `params_io.load_params`) onto a mesh of this job's
devices (whatever mesh, device count and process count wrote them) and prints
AUC and logloss per (domain, task) over the whole split. Needs neither an
optimizer nor a train step: only the model and its jitted eval step. Every
process computes the same figures from every process's rows. Takes the same
--distributed flags as m3oe_jax.train.
"""

from __future__ import annotations

import json

import jax
import ml_collections
from absl import flags

from m3oe_jax import checkpoint, cli, metrics, params_io, paths, sharding
from m3oe_jax.data import FeatureSchema, load_dataset
from m3oe_jax.errors import ConfigError, MissingCheckpointError, WorkdirError
from m3oe_jax.trainer import Evaluator

_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint.")
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
_MESH_DATA = flags.DEFINE_integer("mesh_data", -1, "Data axis size (-1: the rest).")
_MESH_MODEL = flags.DEFINE_integer("mesh_model", 1, "Model axis size.")
_EMBEDDING_AXIS = flags.DEFINE_string("embedding_axis", "",
                                      "Mesh axis to row-shard the tables on.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the metrics to this JSON file.")


def evaluate_checkpoint(workdir: str, split: str = "test", which: str = "best",
                        mesh: dict | None = None) -> dict:
  """Per-(domain, task) metrics of a saved checkpoint on `split`.

  `mesh` overrides fields of the saved config's mesh section (data, model,
  embedding_axis); by default the data axis spans every device.
  """
  root = paths.resolve(workdir) / "checkpoints"
  if not paths.exists(root / which):
    raise MissingCheckpointError(f"no {which} checkpoint under {root} (no such directory); "
                                 "check --workdir, or pick another with --which")
  # The newest step, read whole even while a trainer replaces it.
  _, result = params_io.read_newest(
      workdir, which, lambda step: _evaluate_step(workdir, which, step, split, mesh))
  return result


def _evaluate_step(workdir: str, which: str, step: int, split: str, mesh: dict | None) -> dict:
  store = checkpoint.CheckpointStore(workdir, read_only=True)
  try:
    meta = store.read_meta(which, step)
  except Exception as e:  # pylint: disable=broad-except
    raise WorkdirError(f"the {which} checkpoint {store.root / which / str(step)} does not "
                       f"read ({type(e).__name__}: {str(e)[:300]})") from None
  config = ml_collections.ConfigDict(meta["config"])
  config.mesh.update({"data": -1, "model": 1, "embedding_axis": "", **(mesh or {})})
  dataset = load_dataset(config.data, config.get("variant"))
  saved = FeatureSchema.from_dict(meta["schema"]).model_signature()
  if saved != dataset.schema.model_signature():
    raise WorkdirError(f"the data prepared from the checkpoint's config no longer matches "
                     f"its feature schema: checkpoint has {saved}, data has "
                     f"{dataset.schema.model_signature()}")
  if split not in dataset.splits:
    raise ConfigError(f"--split={split!r}: the data has splits {sorted(dataset.splits)}")
  evaluator = Evaluator(config, dataset, sharding.make_mesh(config.mesh))
  variables, _, _ = params_io.load_params(workdir, which, step, shardings=evaluator.shardings)
  result, _ = evaluator.evaluate(variables, split)
  return result


def main(argv):
  cli.start(argv)
  result = evaluate_checkpoint(
      cli.WORKDIR.value, _SPLIT.value, _WHICH.value,
      dict(data=_MESH_DATA.value, model=_MESH_MODEL.value,
           embedding_axis=_EMBEDDING_AXIS.value))
  if jax.process_index() == 0:
    print(metrics.format_table(result, f"{_SPLIT.value} ({_WHICH.value} checkpoint)"))
    if _OUTPUT.value:
      paths.resolve(_OUTPUT.value).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
