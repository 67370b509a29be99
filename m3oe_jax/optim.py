"""Optimizers for the bilevel architecture/model update.

Two `optax.multi_transform` optimizers over the same parameter tree, each with
its own state, labelled by `models.param_groups`:

  model_tx  the optimizer of every training batch,
  arch_tx   the architecture optimizer: Adam on `arch`, `model` frozen.

Schedules (config.optimizer.schedule):
  reference  the authors' code: model_tx updates *every* weight, the four arch
             logits included (its torch Adam is built over all parameters);
             once per epoch arch_tx takes one step on a training batch.
  paper      the paper's text: model_tx freezes `arch`; once per epoch arch_tx
             takes one step on a training batch.
  darts      first-order DARTS: model_tx freezes `arch`; every
             `arch_every_steps` steps arch_tx takes one step on a validation batch.

A group frozen by a transform gets `optax.set_to_zero()` (no state, no update),
and `apply_updates` leaves its parameters untouched bit for bit.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import optax

from m3oe_jax.models import ARCH_GROUP, MODEL_GROUP, param_groups

SCHEDULES = ("reference", "paper", "darts")


def adam_with_l2(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
  """torch.optim.Adam(weight_decay=wd): wd * param is added to the gradient."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
      optax.scale_by_learning_rate(learning_rate),
  )


@dataclasses.dataclass(frozen=True)
class Optimizers:
  model_tx: optax.GradientTransformation
  arch_tx: optax.GradientTransformation
  labels: object
  model_tx_trains: frozenset  # groups model_tx updates
  arch_tx_trains: frozenset = frozenset({ARCH_GROUP})


def make_optimizers(config: ml_collections.ConfigDict, params) -> Optimizers:
  if config.schedule not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule={config.schedule!r}; "
                     f"expected one of {SCHEDULES}")
  for name in ("model_lr", "arch_lr"):
    if not config[name] > 0:
      raise ValueError(f"config.optimizer.{name} must be > 0, got {config[name]}")
  if config.weight_decay < 0:
    raise ValueError(f"config.optimizer.weight_decay must be >= 0, got {config.weight_decay}")
  labels = param_groups(params)
  model_adam = adam_with_l2(config.model_lr, config.weight_decay)
  if config.schedule == "reference":
    trains = frozenset({MODEL_GROUP, ARCH_GROUP})
    arch_in_main = adam_with_l2(config.model_lr, config.weight_decay)
  else:
    trains = frozenset({MODEL_GROUP})
    arch_in_main = optax.set_to_zero()
  model_tx = optax.multi_transform({MODEL_GROUP: model_adam, ARCH_GROUP: arch_in_main}, labels)
  arch_tx = optax.multi_transform(
      {MODEL_GROUP: optax.set_to_zero(),
       ARCH_GROUP: adam_with_l2(config.arch_lr, config.weight_decay)}, labels)
  return Optimizers(model_tx=model_tx, arch_tx=arch_tx, labels=labels,
                    model_tx_trains=trains)


def apply_updates(params, updates, labels, trains: frozenset):
  """params + updates for the groups in `trains`; other leaves returned as they are."""
  return jax.tree.map(lambda p, u, g: p + u if g in trains else p, params, updates, labels)
