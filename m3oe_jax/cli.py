"""Command-line pieces shared by the commands (train, evaluate, the data
preparation, export, sweep): the common flags, and `run`, which reports a
mistake in the user's input as one message (`m3oe_jax.errors`)."""

import importlib.util
import logging as std_logging
import os
import pathlib
import sys

import jax
from absl import app, flags, logging

from m3oe_jax.errors import ConfigError, UserError

WORKDIR = flags.DEFINE_string("workdir", None,
                              "The run's directory: checkpoints, TensorBoard logs, metrics.")
flags.register_validator("workdir", lambda value: value is None or value.strip() != "",
                         "--workdir is empty: name the run's folder (e.g. --workdir=runs/first)")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-process runs).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_VERBOSE_ERRORS = flags.DEFINE_bool(
    "verbose_errors", False,
    "Print the Python traceback of errors in the input too (also M3OE_VERBOSE_ERRORS=1).")
USER_ERROR_STATUS = 2


def run(main) -> None:
  """`app.run(main)`, except that a mistake in the command line, the config or
  the data (a `UserError`, or a flag or config file that does not parse) is
  printed as one line `<command>: error: <message>` with exit status 2 and no
  traceback, unless --verbose_errors or M3OE_VERBOSE_ERRORS=1. Other exceptions
  are bugs and keep their traceback."""

  def guarded_main(argv):
    try:
      return main(argv)
    except UserError as e:
      if _verbose(sys.argv):
        raise
      _exit_with_message(str(e))

  app.run(guarded_main, flags_parser=_parse_flags)


def _verbose(argv) -> bool:
  if os.environ.get("M3OE_VERBOSE_ERRORS", "") not in ("", "0"):
    return True
  return any(a in ("--verbose_errors", "--verbose_errors=true", "--verbose_errors=True")
             for a in argv)


def _command() -> str:
  main_module = sys.modules.get("__main__")
  spec = getattr(main_module, "__spec__", None)
  return spec.name if spec is not None else os.path.basename(sys.argv[0])


def _exit_with_message(message: str) -> None:
  logging.flush()
  print(f"{_command()}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(USER_ERROR_STATUS)


# The configs shipped in the package; `configs/` in a checkout links here.
PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"


def config_path(path: str) -> str:
  """A config file's path as given, or, when no such file exists and it names one
  under `configs/`, that file of the installed package (so the documented
  `--config=configs/NAME.py` works outside a checkout)."""
  given = os.path.expanduser(path)
  parts = pathlib.PurePath(given).parts
  if os.path.exists(given) or len(parts) < 2 or parts[0] != "configs":
    return given
  packaged = PACKAGED_CONFIGS.joinpath(*parts[1:])
  return str(packaged) if packaged.exists() else given


def _with_config_paths(argv):
  """argv with every `--config=FILE[:ARG]` and `--config FILE[:ARG]` resolved by
  `config_path`."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      path, colon, rest = arg[len("--config="):].partition(":")
      out[i] = f"--config={config_path(path)}{colon}{rest}"
    elif arg == "--config" and i + 1 < len(out):
      path, colon, rest = out[i + 1].partition(":")
      out[i + 1] = f"{config_path(path)}{colon}{rest}"
  return out


def _parse_flags(argv):
  argv = _with_config_paths(argv)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if _verbose(argv):
      raise
    _exit_with_message(_flag_error_message(e, argv))


def _flag_error_message(error: Exception, argv) -> str:
  """One line for a command line that does not parse: the innermost error of a
  config file, or the override that names a field the config does not have."""
  text = str(error)
  if "Traceback (most recent call last)" in text:  # a config file raised
    head = text.split(":", 1)[0]
    last = [line.strip() for line in text.strip().splitlines() if line.strip()][-1]
    return f"{head}: {last}"
  if isinstance(error, flags.Error):
    return text
  unknown = _unknown_override(argv)
  if unknown:
    return unknown
  if isinstance(error, OSError):  # a config file that does not load, without an override
    return f"cannot load a config file ({_os_error_detail(text)})"
  return f"the command line does not parse ({type(error).__name__}: {text})"


def _unknown_override(argv) -> str | None:
  """The message for the first `--<flag>.<path>=...` whose path the config of
  `--<flag>=FILE[:ARG]` lacks."""
  values = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
  for arg, value in values.items():
    if "." not in arg or arg.split(".", 1)[0] not in values:
      continue
    name, path = arg.split(".", 1)
    try:
      file, _, config_arg = values[name].partition(":")
      node = load_config_file(file, config_arg or None)
    except OSError as e:
      return _cannot_load(name, str(e))
    except Exception:  # pylint: disable=broad-except
      return None
    where = name
    for part in path.split("."):
      if not hasattr(node, "keys") or part not in node:
        fields = f"; its fields are {', '.join(sorted(node.keys()))}" if hasattr(node, "keys") else ""
        return f"--{arg}: {where} has no field {part!r}{fields}"
      node, where = node[part], f"{where}.{part}"
  return None


def load_config_file(path: str, arg: str | None = None):
  """`get_config(arg)` of a config file (`get_config()` without an argument), as
  --config loads it; the file is found as `config_path` finds it."""
  file = config_path(path)
  if not os.path.isfile(file):
    raise FileNotFoundError(f"config file {path} not found (looked at {os.path.abspath(file)})")
  module_spec = importlib.util.spec_from_file_location("_m3oe_config_file", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def config_value(config_flag) -> object:
  """The value of a config-file flag, or a ConfigError naming the file when it
  could not be loaded (ml_collections defers that error to the first use)."""
  try:
    value = config_flag.value
    value.keys()  # a config that failed to load raises here
    return value
  except OSError as e:
    raise ConfigError(_cannot_load(config_flag.name, str(e))) from None


def _cannot_load(flag: str, text: str) -> str:
  return f"--{flag}: cannot load the config file ({_os_error_detail(text)})"


def _os_error_detail(text: str) -> str:
  """The `[Errno N] ...` line of an OSError's message, else its first line."""
  lines = [line.strip() for line in text.split("\n") if line.strip()]
  detail = [line for line in lines if line.startswith("[Errno")]
  return detail[-1] if detail else (lines[0] if lines else text)


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
  """Orbax reports every save and restore at INFO, and fsspec each file it reads
  from a bucket; keep the console to progress lines."""
  def keep(record) -> bool:
    if "orbax" in record.pathname:
      return False
    return (record.levelno >= std_logging.WARNING
            or not record.name.startswith(("fsspec", "gcsfs")))

  logging.get_absl_handler().addFilter(keep)
