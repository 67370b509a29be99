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
  none       one optimizer over every weight and no architecture step: the
             baselines' setup, and the schedule of any model without `arch`
             weights whatever the config says.

The model learning rate may decay in steps, as torch's StepLR once per epoch:
lr = model_lr * lr_decay_factor ** floor(epoch / lr_decay_every_epochs)
(`lr_decay_every_epochs = 0`: constant).

A group frozen by a transform gets `optax.set_to_zero()` (no state, no update),
and `apply_updates` leaves its parameters untouched bit for bit.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import ml_collections
import optax

from m3oe_jax import losses
from m3oe_jax.errors import ConfigError, is_number, is_whole
from m3oe_jax.models import ARCH_GROUP, MODEL_GROUP, has_arch_weights, param_groups

SCHEDULES = ("reference", "paper", "darts", "none")


def adam_with_l2(learning_rate, weight_decay: float) -> optax.GradientTransformation:
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
  schedule: str  # the effective bilevel schedule
  arch_tx_trains: frozenset = frozenset({ARCH_GROUP})


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses, before any data is prepared, a `config.optimizer` that cannot
  train: an unknown schedule or loss, a learning rate that is not > 0, a
  negative weight decay, a StepLR outside its range, task weights that are not
  finite numbers >= 0 with one > 0 or an unknown task weighting."""
  if config.schedule not in SCHEDULES:
    raise ConfigError(f"config.optimizer.schedule={config.schedule!r}; "
                      f"expected one of {SCHEDULES}")
  for name in ("train_loss", "arch_loss"):
    losses.check_name(config.get(name, "mean"), name)
  for name in ("model_lr", "arch_lr"):
    if not is_number(config[name]) or not config[name] > 0:
      raise ConfigError(f"config.optimizer.{name} must be > 0, got {config[name]!r}")
  if not is_number(config.weight_decay) or config.weight_decay < 0:
    raise ConfigError("config.optimizer.weight_decay must be >= 0, got "
                      f"{config.weight_decay!r}")
  every, factor = config.get("lr_decay_every_epochs", 0), config.get("lr_decay_factor", 1.0)
  if not is_whole(every) or every < 0:
    raise ConfigError("config.optimizer.lr_decay_every_epochs must be a whole number >= 0 "
                      f"(0: a constant learning rate), got {every!r}")
  if not is_number(factor) or not 0 < factor <= 1:
    raise ConfigError(f"config.optimizer.lr_decay_factor must be in (0, 1], got {factor!r}")
  check_task_weights(config)
  if config.schedule == "darts":
    arch_every = config.get("arch_every_steps", 1)
    if not is_whole(arch_every) or arch_every < 1:
      raise ConfigError("config.optimizer.arch_every_steps must be >= 1 for schedule "
                        f"'darts', got {arch_every!r}")


def check_task_weights(config: ml_collections.ConfigDict, num_tasks: int | None = None) -> None:
  """Refuses `config.optimizer.task_weights` / `task_weighting` that cannot be used;
  with `num_tasks`, task weights that are not one per task."""
  weighting = config.get("task_weighting", "fixed")
  if not isinstance(weighting, str) or weighting not in losses.WEIGHTINGS:
    raise ConfigError(f"config.optimizer.task_weighting={weighting!r}; expected one of "
                      f"{losses.WEIGHTINGS}")
  weights = config.get("task_weights", ())
  if not isinstance(weights, (tuple, list)) or not all(
      is_number(w) and math.isfinite(w) and w >= 0 for w in weights):
    raise ConfigError("config.optimizer.task_weights must be finite numbers >= 0, one per "
                      f"task (() for all 1), got {weights!r}")
  if weights and not any(w > 0 for w in weights):
    raise ConfigError(f"config.optimizer.task_weights are all 0: {weights!r}")
  if num_tasks is not None and weights and len(weights) != num_tasks:
    raise ConfigError(f"config.optimizer.task_weights has {len(weights)} weights, but the "
                      f"data has {num_tasks} tasks")


def effective_schedule(config: ml_collections.ConfigDict, params) -> str:
  """The configured schedule, or 'none' for a model without architecture weights."""
  return config.schedule if has_arch_weights(params) else "none"


def model_learning_rate(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The model learning rate: a float, or StepLR's staircase as an optax schedule."""
  every = int(config.get("lr_decay_every_epochs", 0))
  if every == 0:
    return config.model_lr
  return optax.exponential_decay(config.model_lr, transition_steps=every * steps_per_epoch,
                                 decay_rate=config.lr_decay_factor, staircase=True)


def make_optimizers(config: ml_collections.ConfigDict, params,
                    steps_per_epoch: int = 1) -> Optimizers:
  check_config(config)
  schedule = effective_schedule(config, params)
  labels = param_groups(params)
  model_lr = model_learning_rate(config, steps_per_epoch)
  model_adam = adam_with_l2(model_lr, config.weight_decay)
  if schedule in ("reference", "none"):
    trains = frozenset({MODEL_GROUP, ARCH_GROUP})
    arch_in_main = adam_with_l2(model_lr, config.weight_decay)
  else:
    trains = frozenset({MODEL_GROUP})
    arch_in_main = optax.set_to_zero()
  model_tx = optax.multi_transform({MODEL_GROUP: model_adam, ARCH_GROUP: arch_in_main}, labels)
  arch_tx = optax.multi_transform(
      {MODEL_GROUP: optax.set_to_zero(),
       ARCH_GROUP: adam_with_l2(config.arch_lr, config.weight_decay)}, labels)
  return Optimizers(model_tx=model_tx, arch_tx=arch_tx, labels=labels,
                    model_tx_trains=trains, schedule=schedule)


def apply_updates(params, updates, labels, trains: frozenset):
  """params + updates for the groups in `trains`; other leaves returned as they are."""
  return jax.tree.map(lambda p, u, g: p + u if g in trains else p, params, updates, labels)
