"""Pure, jit-able training and evaluation steps."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from m3oe_jax import losses
from m3oe_jax.optim import Optimizers, apply_updates


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_opt_state: optax.OptState
  arch_opt_state: optax.OptState


def create_train_state(params, optimizers: Optimizers) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_opt_state=optimizers.model_tx.init(params),
      arch_opt_state=optimizers.arch_tx.init(params),
  )


def _loss_and_grads(model, loss_fn, num_domains, params, batch):

  def loss_of(p):
    logits, _ = model.apply({"params": p}, batch)
    return loss_fn(logits, batch["labels"], batch["domain"], batch["mask"], num_domains)

  return jax.value_and_grad(loss_of)(params)


def make_model_step(model, optimizers: Optimizers, loss_name: str,
                    num_domains: int) -> Callable:
  """(state, batch) -> (state, metrics): one update of `model_tx`."""
  loss_fn = losses.get_loss(loss_name)

  def model_step(state: TrainState, batch):
    loss, grads = _loss_and_grads(model, loss_fn, num_domains, state.params, batch)
    updates, opt_state = optimizers.model_tx.update(grads, state.model_opt_state,
                                                    state.params)
    params = apply_updates(state.params, updates, optimizers.labels,
                           optimizers.model_tx_trains)
    state = state.replace(step=state.step + 1, params=params, model_opt_state=opt_state)
    return state, {"loss": loss}

  return model_step


def make_arch_step(model, optimizers: Optimizers, loss_name: str,
                   num_domains: int) -> Callable:
  """(state, batch) -> (state, metrics): one update of `arch_tx`; model weights frozen."""
  loss_fn = losses.get_loss(loss_name)

  def arch_step(state: TrainState, batch):
    loss, grads = _loss_and_grads(model, loss_fn, num_domains, state.params, batch)
    updates, opt_state = optimizers.arch_tx.update(grads, state.arch_opt_state,
                                                   state.params)
    params = apply_updates(state.params, updates, optimizers.labels,
                           optimizers.arch_tx_trains)
    return state.replace(params=params, arch_opt_state=opt_state), {"arch_loss": loss}

  return arch_step


def make_eval_step(model) -> Callable:
  """(params, batch) -> (probabilities [B, T], gates [B, T, E] or None)."""

  def eval_step(params, batch):
    logits, aux = model.apply({"params": params}, batch)
    return jax.nn.sigmoid(logits), aux.get("gates")

  return eval_step
