"""The process around a run: JAX's persistent compilation cache pointed at the
run's folder (and the compilation time counted), and the SIGTERM watch that lets
the loop save and stop cleanly when the job is preempted."""

from __future__ import annotations

import dataclasses
import signal

import jax
from etils import epath
from jax.experimental import multihost_utils
from jax.experimental.compilation_cache import compilation_cache

from m3oe_jax import paths


class PreemptedDuringStartup(Exception):
  """A SIGTERM came before the first training step: stop without saving."""


@dataclasses.dataclass
class Timings:
  """Wall-clock seconds of a run's phases, filled in by `train_and_evaluate`.

  `epochs`: (epoch, steps, seconds) of each epoch's training calls (batches,
  steps, logging and health checks, and the epoch's architecture steps; not its
  checkpoints). `evaluation` and `checkpointing`: seconds of each validation /
  test pass and of each save. `compilation`: seconds JAX spent compiling or
  reading programs from the persistent cache, `programs` how many, `cache_hits`
  how many came from the cache; `first_call`: the first training call, compile
  included."""
  epochs: list = dataclasses.field(default_factory=list)
  evaluation: list = dataclasses.field(default_factory=list)
  checkpointing: list = dataclasses.field(default_factory=list)
  compilation: float = 0.0
  programs: int = 0
  cache_hits: int = 0
  first_call: float | None = None


# JAX's monitoring events, counted for the whole process; a run reports the change.
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_compiles = {"seconds": 0.0, "programs": 0, "cache_hits": 0}


def _on_duration(event, duration, **kwargs):
  del kwargs
  if event == _COMPILE_EVENT:
    _compiles["seconds"] += duration
    _compiles["programs"] += 1


def _on_event(event, **kwargs):
  del kwargs
  if event == _CACHE_HIT_EVENT:
    _compiles["cache_hits"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)


class CompilationCache:
  """Points JAX's persistent compilation cache at `config.compilation_cache_dir`
  for the run (every program is cached, however fast it compiled) and restores
  the previous settings afterwards. "" leaves JAX's settings alone."""

  def __init__(self, folder: str, workdir: epath.Path):
    self.folder = str(paths.resolve(folder.replace("{workdir}", str(workdir)))) if folder else ""
    self.previous = None

  def __enter__(self):
    if self.folder:
      self.previous = (jax.config.jax_compilation_cache_dir,
                       jax.config.jax_persistent_cache_min_compile_time_secs)
      jax.config.update("jax_compilation_cache_dir", self.folder)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
      compilation_cache.reset_cache()
    self.start = dict(_compiles)
    return self

  def spent(self) -> dict:
    return {k: _compiles[k] - self.start[k] for k in _compiles}

  def __exit__(self, *exc_info):
    if self.previous is not None:
      jax.config.update("jax_compilation_cache_dir", self.previous[0])
      jax.config.update("jax_persistent_cache_min_compile_time_secs", self.previous[1])
      compilation_cache.reset_cache()


class PreemptionWatch:
  """Notes SIGTERM so the loop can save at the current step and exit cleanly.

  One process: a Python SIGTERM handler. Until `training_started()`, a SIGTERM
  stops the start-up at once (nothing has been trained, so nothing is saved, and
  the command exits 0); after it, the loop saves at the current step. Several
  processes: JAX's preemption service (started by jax.distributed.initialize)
  catches the signal in any process and agrees with the others on one step at
  which all of them stop.
  """

  def __init__(self):
    self.requested = False
    self.started = False
    self.previous = None
    if jax.process_count() > 1:
      return
    try:
      self.previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handler
      pass

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    if not self.started:
      raise PreemptedDuringStartup()

  def training_started(self) -> None:
    self.started = True
    if self.requested:
      raise PreemptedDuringStartup()

  def close(self) -> None:
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)
      self.previous = None

  def should_stop(self, step_number: int) -> bool:
    """Call at every step, in every process."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step_number)
    return self.requested
