"""Trains and evaluates a ranking model: `python -m m3oe_jax.train --config=... --workdir=...`.

Data flows one way: config -> dataset -> batches -> jitted steps -> metrics and
checkpoints. Rerunning the same command resumes from the workdir's latest
checkpoint; a finished run only re-reports its test metrics, and a larger
`--config.num_epochs` continues a run that did not stop early.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import time

import jax
import ml_collections
import numpy as np
from absl import flags, logging
from etils import epath
from ml_collections import config_flags

from m3oe_jax import (checkpoint, cli, config_utils, data, metrics, models, optim, paths,
                      run_context, run_identity, run_log, sharding)
from m3oe_jax.data import load_dataset, pipeline, variants
from m3oe_jax.errors import ConfigError, DiskFullError, UserError, WorkdirError
from m3oe_jax.trainer import Trainer
from m3oe_jax.workdir_lock import WorkdirLock

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")


# reference: as the authors' trainers, the best weights if early stopping fired and
# the last otherwise (likely a bug of theirs: their comment says the best are kept);
# best: the weights of the best validation mean AUC.
TEST_WEIGHTS = ("reference", "best")


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jax.numpy.all(jax.numpy.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jax.numpy.all(jax.numpy.stack(leaves))


def _save(store, which, state, progress, config, schema, validation=None):
  """Saves `state` unless it holds a non-finite parameter (then raises)."""
  if not bool(_all_finite(state.params)):
    raise run_log.NonFiniteLossError(
        f"non-finite parameters at step {int(state.step)}; stopping without saving. "
        f"{store.kept_description()} Lower config.optimizer.model_lr and train in a new "
        "--workdir, or inspect the data.")
  store.save(which, state, progress, config, schema, validation)


def _numbers(node, prefix="config"):
  """(dotted name, value) of every number in a config."""
  for key, value in node.items():
    if hasattr(value, "items"):
      yield from _numbers(value, f"{prefix}.{key}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield f"{prefix}.{key}", value
    elif isinstance(value, (tuple, list)):
      for i, v in enumerate(value):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
          yield f"{prefix}.{key}[{i}]", v


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses, before anything is prepared or compiled, config values that
  cannot train: non-finite numbers, counts below 1, unknown choices; each
  section is checked by the module that uses it."""
  for name, value in _numbers(config):
    if not math.isfinite(value):
      raise ConfigError(f"{name}={value}: every number in the config must be finite")
  for name in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps",
               "checkpoint_every_steps", "patience"):
    if int(config[name]) < 1 or int(config[name]) != config[name]:
      raise ConfigError(f"config.{name} must be a whole number >= 1, got {config[name]}")
  factor = config.get("divergence_factor", run_log.DIVERGENCE_FACTOR)
  if factor != 0 and not factor > 1:
    raise ConfigError(f"config.divergence_factor must be 0 (no check) or > 1, got {factor}")
  for name, least in (("steps_per_call", 1), ("prefetch_batches", 0)):
    value = config.get(name, least)
    if isinstance(value, bool) or int(value) != value or value < least:
      raise ConfigError(f"config.{name} must be a whole number >= {least}, got {value!r}")
  if not isinstance(config.get("async_checkpointing", True), bool):
    raise ConfigError("config.async_checkpointing must be True or False, got "
                      f"{config.async_checkpointing!r}")
  if not isinstance(config.get("compilation_cache_dir", ""), str):
    raise ConfigError("config.compilation_cache_dir must be a folder (a string; \"\" "
                      f"leaves JAX's cache settings alone), got {config.compilation_cache_dir!r}")
  if config.get("test_weights", "reference") not in TEST_WEIGHTS:
    raise ConfigError(f"config.test_weights={config.test_weights!r}; expected one of "
                      f"{TEST_WEIGHTS}")
  for name in ("init_weights", "train_order"):
    if not isinstance(config.get(name, ""), str):
      raise ConfigError(f"config.{name} must be a file path (a string; \"\": none), got "
                        f"{config[name]!r}")
  models.check_config(config.model)
  config_utils.check_training_setup(config)
  optim.check_config(config.optimizer)
  data.check_config(config.data)
  if "variant" in config:
    variants.check_config(config.variant)
  sharding.check_config(config.mesh)


def _note_finished_run(progress: checkpoint.Progress, num_epochs: int) -> None:
  """Says why a resumed run that trains no further only re-reports its test
  metrics, whatever `config.num_epochs` now says."""
  trained = f"{progress.epoch} epochs" + (
      f" and {progress.batch} batches of the next" if progress.batch else "")
  if progress.stopped_early:
    logging.info(
        "this run stopped early after %s (no better validation mean AUC for %d epochs; "
        "best epoch %s); re-reporting its test metrics. config.num_epochs=%d changes "
        "nothing: a run that stopped early does not continue; train in a new --workdir "
        "to train again.", trained, progress.epochs_without_improvement,
        progress.best_epoch, num_epochs)
  elif progress.epoch > num_epochs or (progress.epoch == num_epochs and progress.batch):
    logging.warning(
        "this run already trained %s, more than config.num_epochs=%d; re-reporting the "
        "test metrics of that longer run (best epoch %s). Nothing is trained or undone; "
        "to train %d epochs, use a new --workdir.", trained, num_epochs,
        progress.best_epoch, num_epochs)
  elif progress.epoch == num_epochs:
    logging.info("this run finished its %d epochs; re-reporting its test metrics (a larger "
                 "config.num_epochs continues it).", num_epochs)


def _preempted(logger: run_log.RunLog, store: checkpoint.CheckpointStore,
               step_number: int) -> dict:
  logger.close()
  logging.info("preempted: saved step %d to %s; rerun the same command to resume",
               step_number, store.root)
  return {"preempted": True, "step": step_number}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, dataset=None,
                       timings: run_context.Timings | None = None) -> dict:
  """Trains with early stopping, then evaluates the best weights on the test split.

  Returns the test metrics (also written to `workdir/metrics.json`). Holds the
  workdir's lock throughout (one trainer per workdir). A SIGTERM before the
  first step returns {"preempted": True, "step": None} without saving.
  `dataset` replaces the one `config.data` names (benchmarks); `timings`, when
  given, receives the run's phase timings.
  """
  check_config(config)
  workdir = paths.resolve(workdir)
  preemption = run_context.PreemptionWatch()
  timings = run_context.Timings() if timings is None else timings
  try:
    with WorkdirLock(workdir, in_use=lambda: preemption.started), run_context.CompilationCache(
        config.get("compilation_cache_dir", ""), workdir) as cache:
      try:
        return _train_and_evaluate(config, workdir, preemption, dataset, timings)
      finally:
        spent = cache.spent()
        timings.compilation, timings.programs, timings.cache_hits = (
            spent["seconds"], spent["programs"], spent["cache_hits"])
        logging.info("compilation: %.1f s for %d programs, %d of them from the persistent "
                     "cache %s", timings.compilation, timings.programs, timings.cache_hits,
                     cache.folder or "(not set by config.compilation_cache_dir)")
  except run_context.PreemptedDuringStartup:
    logging.info("SIGTERM during start-up: stopped before training; the workdir's "
                 "checkpoints are as they were; rerun the same command to resume")
    return {"preempted": True, "step": None}
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    raise _disk_full(e, workdir) from e
  finally:
    preemption.close()


def _disk_full(error: OSError, workdir: epath.Path) -> DiskFullError:
  where = (f"a device this run writes to (the workdir's has "
           f"{paths.mib(paths.free_bytes(workdir))} free)")
  if error.filename:
    free = paths.free_bytes(paths.resolve(os.path.dirname(error.filename)))
    where = f"the device of {error.filename} ({paths.mib(free)} free)"
  return DiskFullError(
      f"no space left on {where}. What was saved before (data already prepared, the "
      f"checkpoints in {workdir / 'checkpoints'}) is intact: free space (or move that folder "
      "to a larger disk) and rerun the same command to resume.")


def _timed(seconds: list, function, *args, **kwargs):
  start = time.perf_counter()
  try:
    return function(*args, **kwargs)
  finally:
    seconds.append(time.perf_counter() - start)


def _call_batches(trainer: Trainer, first_step: int, call: tuple[int, int]):
  index, count = call
  return trainer.train_batches(first_step + index, count)


def _reaches_multiple(step_number: int, count: int, every: int) -> bool:
  """Whether one of steps `step_number - count + 1` .. `step_number` is a multiple
  of `every`: a call that covers it acts at its end."""
  return step_number // every > (step_number - count) // every


def _train_and_evaluate(config, workdir: epath.Path, preemption: run_context.PreemptionWatch,
                        dataset, timings: run_context.Timings) -> dict:
  if dataset is None:
    dataset = load_dataset(config.data, config.get("variant"))
  num_train = len(dataset.splits["train"])
  if config.batch_size > num_train:
    logging.warning("config.batch_size=%d is larger than the %d training rows: every epoch "
                    "is one step on a padded batch", config.batch_size, num_train)
  mesh = sharding.make_mesh(config.mesh)
  trainer = Trainer(config, dataset, mesh)
  with checkpoint.CheckpointStore(
      workdir, asynchronous=bool(config.get("async_checkpointing", True))) as store:
    return _train_then_test(config, workdir, preemption, dataset, timings, trainer, store)


def _train_then_test(config, workdir: epath.Path, preemption: run_context.PreemptionWatch,
                     dataset, timings: run_context.Timings, trainer: Trainer,
                     store: checkpoint.CheckpointStore) -> dict:
  """Resumes or starts, trains epoch by epoch, then tests the chosen weights."""
  store.check_compatible(config, dataset.schema)
  steps_per_epoch = pipeline.num_batches(len(dataset.splits["train"]), config.batch_size)

  resumed = store.restore_newest(trainer.abstract_state(), steps_per_epoch)
  if resumed is None:
    state, progress = trainer.initial_state(config.seed), checkpoint.Progress()
  else:
    state, progress, which, step = resumed
    logging.info("resumed from %s at step %d (epoch %d, batch %d)",
                 store.root / which / str(step), step, progress.epoch, progress.batch)
    _note_finished_run(progress, config.num_epochs)

  def advice() -> str:
    kept = ("No checkpoint of this run was saved before it." if not store.checkpoints() else
            f"The checkpoints in {store.root} hold the last good state (nothing later was "
            "saved).")
    return (f"{kept} Lower config.optimizer.model_lr (now {config.optimizer.model_lr:g}) and "
            "train in a new --workdir (the learning rate cannot change on resumption), or "
            "inspect the data.")

  logger = run_log.RunLog(workdir, steps_per_epoch * config.num_epochs, config.batch_size,
                          float(config.get("divergence_factor", run_log.DIVERGENCE_FACTOR)), advice)
  schedule = trainer.schedule
  steps_per_call = int(config.get("steps_per_call", 1))
  depth = int(config.get("prefetch_batches", 2))
  # darts takes an architecture step after every arch_every_steps-th model step:
  # no call may run past one.
  arch_every = int(config.optimizer.arch_every_steps) if schedule == "darts" else 0
  # The preemption service's sync point counts calls, the same in every process.
  calls = int(state.step)

  def save(*args):
    _timed(timings.checkpointing, _save, *args)

  preemption.training_started()
  preempted = False

  while not progress.stopped_early and progress.epoch < config.num_epochs:
    first_step = progress.epoch * steps_per_epoch  # steps before this epoch
    plan = pipeline.call_plan(first_step, progress.batch, steps_per_epoch, steps_per_call,
                              arch_every)
    epoch_start, saved_before = time.perf_counter(), sum(timings.checkpointing)
    logger.restart_clock(first_step + progress.batch)
    steps_before = progress.batch
    batches_of = functools.partial(_call_batches, trainer, first_step)
    with pipeline.Prefetcher(batches_of, plan, depth) as feed:
      for (index, count), batches in feed:
        state, out = trainer.multi_step(state, batches, np.int32(count))
        if timings.first_call is None:
          jax.block_until_ready(out["loss"])
          timings.first_call = time.perf_counter() - epoch_start
          logging.info("first training call (%d steps, compilation included): %.1f s",
                       count, timings.first_call)
        step_number = first_step + index + count
        logger.add_losses(step_number - count + 1, out["loss"])
        logger.wait_for_previous_step()
        if arch_every and step_number % arch_every == 0:
          state, _ = trainer.arch_step(state, trainer.arch_batch(progress.arch_steps))
          progress.arch_steps += 1
        progress.batch = index + count
        if _reaches_multiple(step_number, count, config.log_every_steps):
          logger.flush_progress(step_number)
        if (_reaches_multiple(step_number, count, config.checkpoint_every_steps)
            and progress.batch < steps_per_epoch):
          logger.check_health()
          save(store, "latest", state, progress, config, dataset.schema)
        calls += 1
        preempted = preemption.should_stop(calls)
        if preempted and progress.batch < steps_per_epoch:
          logger.check_health()
          save(store, "latest", state, progress, config, dataset.schema)
          return _preempted(logger, store, step_number)
    logger.flush_progress(int(state.step))

    if schedule in ("reference", "paper"):
      state, _ = trainer.arch_step(state, trainer.arch_batch(progress.arch_steps))
      progress.arch_steps += 1
      jax.block_until_ready(state)
    seconds = (time.perf_counter() - epoch_start) - (sum(timings.checkpointing) - saved_before)
    steps = steps_per_epoch - steps_before
    timings.epochs.append((progress.epoch, steps, seconds))
    logging.info("epoch %d: %d steps in %.1f s, %.0f examples/s (checkpoints excluded)",
                 progress.epoch, steps, seconds, steps * config.batch_size / max(seconds, 1e-9))
    validation, diagnostics = _timed(timings.evaluation, trainer.evaluate, state.variables(),
                                     "validation")
    epoch = progress.epoch
    logging.info("epoch %d\n%s", epoch, metrics.format_table(validation, "validation"))
    logger.scalars({**metrics.scalars(validation, "validation"),
                    **run_log.diagnostic_scalars(diagnostics, dataset.schema),
                    **trainer.task_weight_scalars(state)}, int(state.step))
    logger.epoch_record(epoch, int(state.step), validation, diagnostics)
    progress.epoch, progress.batch = epoch + 1, 0
    score = validation["mean_auc"]
    if score is not None and (progress.best_metric is None or score > progress.best_metric):
      progress.best_metric, progress.best_step, progress.best_epoch = (
          score, int(state.step), epoch)
      progress.epochs_without_improvement = 0
      save(store, "best", state, progress, config, dataset.schema, validation)
    else:
      progress.epochs_without_improvement += 1
    if progress.epochs_without_improvement >= config.patience:
      logging.info("early stopping after epoch %d: no better validation mean AUC for "
                   "%d epochs (best %.5f at epoch %d)", epoch, config.patience,
                   progress.best_metric, progress.best_epoch)
      progress.stopped_early = True
    save(store, "latest", state, progress, config, dataset.schema, validation)
    more_epochs = not progress.stopped_early and progress.epoch < config.num_epochs
    if preempted and more_epochs:  # the signal came at an epoch's last step
      return _preempted(logger, store, int(state.step))
  logger.close()
  store.wait()  # the last saves, `best` among them, are complete

  best_state, best_progress = _restore_best(store, trainer, progress)
  if config.get("test_weights", "reference") == "reference" and not progress.stopped_early:
    tested, tested_state = "last", state
  else:
    tested, tested_state = "best", best_state
  test, _ = _timed(timings.evaluation, trainer.evaluate, tested_state.variables(), "test")
  schema = dataset.schema
  result = {"test": test, "tested_weights": tested, "tested_step": int(tested_state.step),
            "best_epoch": best_progress.best_epoch, "best_step": best_progress.best_step,
            "best_validation_mean_auc": best_progress.best_metric,
            "model": config.model.name, "seed": int(config.seed),
            "data": config.data.name, "paper_data": data.is_paper_data(config.data.name, schema),
            "domains": list(schema.domain_names),
            "tasks": list(schema.task_names),
            "variant": schema.source.get("variant"),
            "config_hash": run_identity.config_hash(config)}
  if dataset.true_probs is not None:
    test_split = dataset.splits["test"]
    rows = test_split.take(np.arange(len(test_split)))
    result["bayes_optimal_test"] = metrics.evaluate_predictions(
        dataset.true_probs["test"], rows["labels"], rows["domain"], schema.domain_names,
        schema.task_names)
  if jax.process_index() == 0:
    (workdir / "metrics.json").write_text(json.dumps(result, indent=2))
    print(metrics.format_table(test, f"test ({tested} weights, step {int(tested_state.step)}; "
                                     f"best epoch {best_progress.best_epoch})"))
    if "bayes_optimal_test" in result:
      print(metrics.format_table(result["bayes_optimal_test"],
                                 "test, Bayes-optimal (true probabilities)"))
  return result


def _restore_best(store: checkpoint.CheckpointStore, trainer: Trainer,
                  progress: checkpoint.Progress):
  """The best checkpoint's state and progress, or a clear error saying why there is none."""
  if progress.best_step is None:
    raise UserError("no validation AUC was ever defined (every (domain, task) pair of the "
                    "validation split has a single label class); nothing to test")
  if store.latest_step("best") != progress.best_step:
    raise WorkdirError(
        f"the run's best weights are step {progress.best_step}, but "
        f"{store.root / 'best'} holds {store.latest_step('best')} (deleted or moved?). "
        "Put it back, or evaluate the latest weights with `python -m m3oe_jax.evaluate "
        "--which=latest`.")
  try:
    state, best_progress, _ = store.restore("best", trainer.abstract_state())
  except WorkdirError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise WorkdirError(f"the best checkpoint {store.root / 'best' / str(progress.best_step)} "
                       f"does not restore ({type(e).__name__}: {str(e)[:300]}); the "
                       "run's other checkpoints are intact. Put back an intact copy, or "
                       "evaluate the latest weights with --which=latest.") from None
  return state, best_progress


def main(argv):
  cli.start(argv)
  train_and_evaluate(cli.config_value(_CONFIG), cli.WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
