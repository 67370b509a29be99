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
  batch_stats: Any  # BatchNorm running statistics ({} for models without BatchNorm)
  model_opt_state: optax.OptState
  arch_opt_state: optax.OptState

  def variables(self) -> dict:
    """The model's variables (without the task weighting's parameters)."""
    return {"params": losses.model_params(self.params), "batch_stats": self.batch_stats}


def create_train_state(variables: dict, optimizers: Optimizers) -> TrainState:
  """The state at step 0; `variables['params']` may hold the task weighting's entry
  (`losses.WEIGHTING_SCOPE`), trained with the model weights."""
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      model_opt_state=optimizers.model_tx.init(params),
      arch_opt_state=optimizers.arch_tx.init(params),
  )


def train_forward(model, variables: dict, batch) -> tuple[jax.Array, Any]:
  """Train-mode logits and the BatchNorm statistics this batch moved them to."""
  (logits, _), mutated = model.apply(variables, batch, train=True, mutable=["batch_stats"])
  return logits, mutated.get("batch_stats", {})


def _make_update_step(model, tx: optax.GradientTransformation, trains: frozenset,
                      labels, opt_state_field: str, loss_name: str, num_domains: int,
                      metric_name: str, counts_as_step: bool, task_weights=(),
                      task_weighting: str = "fixed") -> Callable:
  """(state, batch) -> (state, metrics): one update of `tx`, whose optimizer state is
  `state.<opt_state_field>`; only the groups in `trains` move."""
  loss_fn = losses.weighted_loss(loss_name, task_weights, task_weighting)

  def loss_of(params, batch_stats, batch):
    variables = {"params": losses.model_params(params), "batch_stats": batch_stats}
    logits, new_stats = train_forward(model, variables, batch)
    loss = loss_fn(params, logits, batch["labels"], batch["domain"], batch["mask"],
                   num_domains)
    return loss, new_stats

  def update_step(state: TrainState, batch):
    (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state.params, state.batch_stats, batch)
    updates, opt_state = tx.update(grads, getattr(state, opt_state_field), state.params)
    params = apply_updates(state.params, updates, labels, trains)
    state = state.replace(params=params, batch_stats=batch_stats,
                          **{opt_state_field: opt_state})
    if counts_as_step:
      state = state.replace(step=state.step + 1)
    return state, {metric_name: loss}

  return update_step


def make_model_step(model, optimizers: Optimizers, loss_name: str, num_domains: int,
                    task_weights=(), task_weighting: str = "fixed") -> Callable:
  """(state, batch) -> (state, {'loss'}): one update of `model_tx`; counts a step.
  The loss is weighted per task as `losses.weighted_loss` says."""
  return _make_update_step(model, optimizers.model_tx, optimizers.model_tx_trains,
                           optimizers.labels, "model_opt_state", loss_name, num_domains,
                           "loss", True, task_weights, task_weighting)


def make_arch_step(model, optimizers: Optimizers, loss_name: str, num_domains: int,
                   task_weights=(), task_weighting: str = "fixed") -> Callable:
  """(state, batch) -> (state, {'arch_loss'}): one update of `arch_tx`; model frozen
  (the task weighting's log-variances included: they are model weights)."""
  return _make_update_step(model, optimizers.arch_tx, optimizers.arch_tx_trains,
                           optimizers.labels, "arch_opt_state", loss_name, num_domains,
                           "arch_loss", False, task_weights, task_weighting)


def make_multi_step(update_step: Callable) -> Callable:
  """(state, batches stacked [k, ...], k) -> (state, metrics stacked [k]):
  `update_step` on each of the k batches in order, in one call.

  k is passed as a runtime value, so XLA cannot unroll or remove the loop: a
  call of one step compiles to the same loop body as a call of k, and k calls of
  one give the same bits as one call of k (a loop known to run once is inlined
  and fused differently)."""

  def multi_step(state: TrainState, batches, count):
    size = batches["mask"].shape[0]

    def body(i, carry):
      state, metrics = carry
      batch = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False),
                           batches)
      state, out = update_step(state, batch)
      return state, {k: metrics[k].at[i].set(v) for k, v in out.items()}

    shapes = jax.eval_shape(update_step, state,
                            jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                                         batches))[1]
    metrics = {k: jnp.zeros((size,) + v.shape, v.dtype) for k, v in shapes.items()}
    return jax.lax.fori_loop(0, count, body, (state, metrics))

  return multi_step


def make_eval_step(model) -> Callable:
  """(variables, batch) -> (probabilities [B, T], the model's diagnostics)."""

  def eval_step(variables, batch):
    logits, aux = model.apply(variables, batch, train=False)
    return jax.nn.sigmoid(logits), aux

  return eval_step
