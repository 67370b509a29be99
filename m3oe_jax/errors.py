"""Errors caused by what the user controls, as opposed to bugs in the program.

A `UserError` (a config value or field, a flag, missing or bad data, a workdir
that is incompatible, locked or unreadable, a missing checkpoint) reaches the
user as one message: what is wrong, which field, file or flag, and what to do.
The commands print it without a traceback and exit with status 2
(`m3oe_jax.cli.run`; `--verbose_errors` or `M3OE_VERBOSE_ERRORS=1` shows the
traceback too). Any other exception is a bug and keeps its traceback.
"""

import math
import numbers


class UserError(Exception):
  """An error in the user's input; its message says what to do."""


class ConfigError(UserError, ValueError):
  """A config value, field or flag that cannot be used."""


class WorkdirError(UserError):
  """A workdir that cannot be used: incompatible, locked, unreadable, read-only,
  or without the checkpoint asked for."""


class MissingCheckpointError(WorkdirError, FileNotFoundError):
  """The workdir has no checkpoint of the kind asked for."""


class DiskFullError(WorkdirError):
  """The workdir's storage ran out of space."""


def is_number(value) -> bool:
  """Whether a config value is a real number (a bool is not)."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_whole(value) -> bool:
  """Whether a config value is a finite whole number (1 and 1.0 are)."""
  return is_number(value) and math.isfinite(value) and float(value).is_integer()
