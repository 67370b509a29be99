"""Runs the contract's sharding check: `python -m tests.contract_run NAME...` with 8
simulated devices runs each model on one device and on each mesh of `LAYOUTS`
(8x1 with its tables row-sharded over 'data'; 2x4 with them row-sharded over
'model', the batch still split over all 8 devices), from the same initial state
on the same batch, and prints one JSON line of the largest differences of the
training loss, the gradient of every weight and the BatchNorm statistics after
the step, per model and layout.

Tolerance: as in tests/test_scale.py, sharding reorders float32 sums, so the
numbers agree to rounding. Seen: gradients within 4e-6 of (1 + |g|) and losses
within 5e-7 on an idle machine, and up to 7e-5 and 7e-6 while other jobs loaded
it (the simulated devices' all-reduce then sums in another order). The check
allows 1e-4, while a missing all-reduce, statistics of one device's rows instead
of the global batch, or a row read twice are off in the first digits.

Why gradients and not the parameters after a few steps: Adam divides each
update by the gradient's own running size, so where the gradient is zero in
exact arithmetic (a bias followed by BatchNorm, e.g. M2M's scenario layer) the
rounding noise alone makes a full +-lr step whose sign depends on the order of
the sums. Such a parameter legitimately differs by up to lr per step between
any two summation orders, one device or eight alike.
"""

import json
import sys

import jax
import numpy as np

from configs import synthetic
from m3oe_jax import config_utils

STEPS = 8  # the in-process contract test's steps on a fixed batch
TOLERANCE = 1e-4
# name -> (mesh.data, mesh.model, mesh.embedding_axis) on 8 devices
LAYOUTS = {"8x1_rows@data": (8, 1, "data"), "2x4_rows@model": (2, 4, "model")}


def tiny_config(name: str, **overrides):
  config = synthetic.get_config(f"tiny,model={name}")
  config.optimizer.model_lr = 1e-3
  config.optimizer.lr_decay_every_epochs = 0
  for field, value in overrides.items():
    config_utils.apply_override(config, field, value)
  return config


def _run(name: str, devices, mesh: tuple[int, int, str], initial=None):
  """(loss, gradients, new BatchNorm statistics, tables sharded, initial state) of one
  step from `initial` (default: the model's own initialisation) on the mesh
  (data, model, embedding_axis) of `devices`."""
  from m3oe_jax import losses, sharding, step
  from m3oe_jax.data import load_dataset
  from m3oe_jax.trainer import Trainer
  data, model, embedding_axis = mesh
  config = tiny_config(name, **{"mesh.data": data, "mesh.model": model,
                                "mesh.embedding_axis": embedding_axis})
  dataset = load_dataset(config.data)
  trainer = Trainer(config, dataset, sharding.make_mesh(config.mesh, devices))
  schema = trainer.schema
  loss_fn = losses.get_loss(losses.resolve(config.optimizer.train_loss, schema.num_domains,
                                            schema.num_tasks))

  def loss_of(params, batch_stats, batch):
    logits, new_stats = step.train_forward(
        trainer.model, {"params": params, "batch_stats": batch_stats}, batch)
    return loss_fn(logits, batch["labels"], batch["domain"], batch["mask"],
                   schema.num_domains), new_stats

  state = (trainer.initial_state(config.seed) if initial is None
           else jax.device_put(initial, trainer.state_sharding))
  (loss, stats), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(
      state.params, state.batch_stats, trainer.train_batch(0))
  tables = sum(1 for s in jax.tree.leaves(trainer.state_sharding.params)
               if not s.is_fully_replicated)
  return float(loss), jax.device_get(grads), jax.device_get(stats), tables, state


def _max_difference(a, b, relative: bool = False) -> float:
  """The largest |a - b| over every leaf, divided by (1 + |a|) when `relative`."""
  differences = [0.0]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = 1 + np.abs(x) if relative else 1.0
    differences.append(float(np.max(np.abs(x - y) / scale)))
  return max(differences)


def main(names):
  results = {}
  for name in names:
    one = _run(name, jax.devices()[:1], (1, 1, ""))
    initial = jax.device_get(one[4])
    for layout, mesh in LAYOUTS.items():
      eight = _run(name, jax.devices(), mesh, initial=initial)
      results[f"{name}/{layout}"] = {
          "loss_difference": abs(one[0] - eight[0]),
          "max_gradient_difference": _max_difference(one[1], eight[1], relative=True),
          "max_batch_stats_difference": _max_difference(one[2], eight[2]),
          "tables_sharded": eight[3],
      }
  print(json.dumps(results))


if __name__ == "__main__":
  main(sys.argv[1:])
