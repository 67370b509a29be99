"""Command-line pieces shared by m3oe_jax.train and m3oe_jax.evaluate."""

import jax
from absl import app, flags, logging

WORKDIR = flags.DEFINE_string("workdir", None,
                              "The run's directory: checkpoints, TensorBoard logs, metrics.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-process runs).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def start(argv) -> None:
  """What every command line does first: refuse stray arguments, quiet orbax's
  logs, and join the other processes when --distributed is given."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_orbax_logs()
  initialize_distributed()


def initialize_distributed() -> None:
  """jax.distributed.initialize() from the --distributed flags (a no-op without).

  Without --coordinator_address and the others, JAX detects them on Cloud TPU and
  under SLURM.
  """
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)


def quiet_orbax_logs() -> None:
  """Orbax reports every save and restore at INFO; keep the console to progress lines."""
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
