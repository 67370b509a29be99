"""What a run reports while it trains: progress lines on the console, scalars to
TensorBoard, one `metrics.jsonl` record per epoch, and the divergence check that
stops a run whose loss runs away or stops being finite."""

from __future__ import annotations

import collections
import json
import math
import time

import jax
import numpy as np
from absl import logging
from etils import epath

from m3oe_jax import paths
from m3oe_jax.errors import UserError

# A loss above this multiple of its reference stops the run (config.divergence_factor).
DIVERGENCE_FACTOR = 10.0
DIVERGENCE_WINDOW = 100


class TrainingDivergedError(UserError, FloatingPointError):
  """The loss ran away or a value became non-finite; the checkpoints already
  saved, if any, hold the last good state."""


class NonFiniteLossError(TrainingDivergedError):
  pass


class RunLog:
  """Progress lines on the console, scalars to TensorBoard (process 0 only)."""

  def __init__(self, workdir: epath.Path, total_steps: int, batch_size: int,
               divergence_factor: float, advice):
    self.writer = None
    self.workdir = workdir
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter
      paths.write_tensorboard_through_epath()
      self.writer = SummaryWriter(str(workdir / "tensorboard"))
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.pending: list[tuple[int, jax.Array]] = []  # (first step, losses [steps])
    self.mark = (time.perf_counter(), None)
    self.divergence_factor = divergence_factor
    self.advice = advice
    self.first_loss = None
    self.recent = collections.deque(maxlen=DIVERGENCE_WINDOW)

  def add_losses(self, first_step: int, losses: jax.Array) -> None:
    """The losses [n] of steps `first_step` .. `first_step + n - 1` (one call)."""
    self.pending.append((first_step, losses))

  def wait_for_previous_step(self) -> None:
    """Keeps at most two calls in flight: the device stays busy while the host
    dispatches the next one, and the queue of dispatched steps stays short (XLA's
    CPU collectives time out when hundreds of steps are queued on a simulated
    mesh)."""
    if len(self.pending) > 1:
      self.pending[-2][1].block_until_ready()

  def check_health(self) -> None:
    """Raises on the first non-finite or runaway loss since the last check.

    Runaway: above `divergence_factor` times the smaller of the first loss this
    process saw and the median of the last DIVERGENCE_WINDOW healthy losses, and
    above that first loss (so a run that has converged to a tiny loss may still
    fluctuate)."""
    values, steps = [], []
    for (first, _), losses in zip(self.pending,
                                  jax.device_get([loss for _, loss in self.pending])):
      losses = np.ravel(losses)
      values += [float(v) for v in losses]
      steps += range(first, first + len(losses))
    for step_number, value in zip(steps, values):
      if not math.isfinite(value):
        raise NonFiniteLossError(f"training loss is {value} at step {step_number}; "
                                 f"stopping. {self.advice()}")
      if self.first_loss is None:
        self.first_loss = value
      reference = min(self.first_loss, float(np.median(self.recent))) if self.recent else None
      if (self.divergence_factor and reference is not None and value > self.first_loss
          and value > self.divergence_factor * reference):
        raise TrainingDivergedError(
            f"training diverged at step {step_number}: loss {value:.4g} is over "
            f"config.divergence_factor={self.divergence_factor:g} times the reference "
            f"{reference:.4g} (the smaller of the first loss and the median of the last "
            f"{len(self.recent)}); stopping. {self.advice()} A loss that legitimately "
            "jumps may raise config.divergence_factor (0 turns the check off).")
      self.recent.append(value)
    self.values = values

  def flush_progress(self, step_number: int) -> None:
    if not self.pending:
      return
    self.check_health()
    now = time.perf_counter()
    start_time, start_step = self.mark
    steps = step_number - (start_step if start_step is not None else self.pending[0][0] - 1)
    rate = steps * self.batch_size / max(now - start_time, 1e-9)
    loss = float(np.mean(self.values))
    eta = (self.total_steps - step_number) * self.batch_size / max(rate, 1e-9)
    logging.info("step %d/%d  %.0f examples/s  loss %.5f  ETA %s", step_number,
                 self.total_steps, rate, loss, time.strftime("%H:%M:%S", time.gmtime(eta)))
    self.scalars({"train/loss": loss, "train/examples_per_second": rate}, step_number)
    self.pending = []
    self.mark = (now, step_number)

  def restart_clock(self, step_number: int) -> None:
    """Rates from now on count from `step_number` (after evaluation, a resume)."""
    self.mark = (time.perf_counter(), step_number)

  def scalars(self, values: dict[str, float], step_number: int) -> None:
    if self.writer is not None:
      for name, value in values.items():
        self.writer.add_scalar(name, value, step_number)

  def epoch_record(self, epoch: int, step_number: int, validation: dict,
                   diagnostics: dict) -> None:
    """Appends the epoch's validation metrics and diagnostics to `metrics.jsonl`
    (one JSON object per line; a rerun after a kill may repeat an epoch, and the
    last line of an epoch is the one that counts)."""
    if jax.process_index() != 0:
      return
    record = {"epoch": epoch, "step": step_number, "validation": validation,
              "diagnostics": {k: v if isinstance(v, dict) else np.asarray(v).tolist()
                              for k, v in diagnostics.items()}}
    paths.append_text(self.workdir / "metrics.jsonl", json.dumps(record) + "\n")

  def close(self):
    if self.writer is not None:
      self.writer.close()


def diagnostic_scalars(diagnostics: dict, schema) -> dict[str, float]:
  """TensorBoard scalars of a model's diagnostics (see models/base.py): a dict of
  scalars as `<name>/<key>`; a per-domain mean [D, T, K...] as
  `<name>/<domain>/<task>/<k>`."""
  values = {}
  for name, value in diagnostics.items():
    if isinstance(value, dict):
      values.update({f"{name}/{key}": float(v) for key, v in value.items()})
      continue
    for index in np.ndindex(*value.shape):
      parts = [schema.domain_names[index[0]]]
      if len(index) > 1 and value.shape[1] == schema.num_tasks:
        parts.append(schema.task_names[index[1]])
        parts += [str(i) for i in index[2:]]
      else:
        parts += [str(i) for i in index[1:]]
      values[f"{name}/" + "/".join(parts)] = float(value[index])
  return values
