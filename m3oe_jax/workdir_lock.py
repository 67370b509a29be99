"""One writer per workdir: an exclusive lock held by the job that trains in it.

The lock is a `file_lock.FileLock` on `<workdir>/lock` (the same lock the data
preparation takes on its folder), taken by process 0 of the job (the others
learn the outcome from it). The kernel releases it whenever the holder dies,
however it dies, so a lock left by a killed trainer never blocks the rerun; the
file records the holder (host, pid, start time, command) for the message a
second trainer gets. Object stores such as gs:// have no locks, and a workdir
there is used without one (a warning says so).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from typing import Callable

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from m3oe_jax import file_lock, paths
from m3oe_jax.errors import WorkdirError

LOCK_FILE = "lock"


class WorkdirLock:
  """`with WorkdirLock(workdir):` creates the workdir, checks that it is
  writable and holds its lock; raises WorkdirError when it cannot.

  `in_use()`, when given, says whether the workdir holds anything yet: a workdir
  this lock created is removed again when the block ends on an error before
  `in_use()` became true (a refused run leaves nothing behind)."""

  def __init__(self, workdir: epath.Path, in_use: Callable[[], bool] | None = None):
    self.workdir = paths.resolve(workdir)
    self.path = self.workdir / LOCK_FILE
    self._lock = None
    self._in_use = in_use
    self._created = False

  def __enter__(self) -> "WorkdirLock":
    problem = ""
    if jax.process_index() == 0:
      try:
        self._acquire()
      except WorkdirError as e:
        problem = str(e)
    if jax.process_count() > 1:
      failed = multihost_utils.broadcast_one_to_all(np.int32(bool(problem)))
      if int(failed) and not problem:
        problem = (f"process 0 of this job could not take the lock of {self.workdir}; "
                   "its log says why")
    if problem:
      self._release()
      raise WorkdirError(problem)
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self._release()
    if exc_type is not None and self._created and self._in_use and not self._in_use():
      try:
        self.workdir.rmtree()
      except OSError as e:
        logging.warning("could not remove the unused workdir %s: %s", self.workdir, e)

  def _acquire(self) -> None:
    if paths.is_url(self.workdir):
      self._acquire_url()
      return
    try:
      self._created = not self.workdir.exists()
      self.workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise WorkdirError(f"--workdir={self.workdir} cannot be created ({e.strerror or e}); "
                         "choose a writable --workdir") from None
    lock = file_lock.FileLock(os.fspath(self.path))
    try:
      lock.acquire(_holder_record, timeout_s=0)
    except file_lock.LockHeldError as e:
      raise WorkdirError(
          f"--workdir={self.workdir} is in use by another trainer ({_describe(e.holder)}; "
          f"lock file {self.path}). Wait for it to finish or stop it, or use another "
          "--workdir.") from None
    except OSError as e:
      raise WorkdirError(f"--workdir={self.workdir} is not writable ({e.strerror}: "
                         f"{self.path}); choose a writable --workdir") from None
    self._lock = lock
    self._check_writable()

  def _acquire_url(self) -> None:
    """An object store: no folder to create (a missing bucket is an error, never
    created) and no lock; a probe object checks the credentials and the bucket."""
    probe = self.workdir / "checkpoints" / ".write_test"
    try:
      self._created = not self.workdir.exists()
      probe.write_text("ok")
      probe.unlink()
    except Exception as e:  # pylint: disable=broad-except
      raise paths.storage_error(f"--workdir={self.workdir}", e) from None
    logging.warning("%s is not on a local or network file system: it has no lock, so "
                    "make sure no other trainer uses it", self.workdir)

  def _check_writable(self) -> None:
    """Finds storage that refuses writes now rather than at the first save."""
    probe = self.workdir / "checkpoints" / ".write_test"
    try:
      probe.parent.mkdir(parents=True, exist_ok=True)
      probe.write_text("ok")
      probe.unlink()
    except OSError as e:
      raise WorkdirError(f"--workdir={self.workdir} is not writable ({e.strerror or e}: "
                         f"{probe}); choose a writable --workdir") from None

  def _release(self) -> None:
    if self._lock is not None:
      self._lock.release()  # clears the record; closing the file drops the flock
      self._lock = None


def _holder_record() -> dict:
  """What a second trainer is told about this one."""
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds"),
          "command": " ".join(sys.argv)}


def _describe(holder: dict | None) -> str:
  if not holder:
    return "holder unknown"
  return (f"host {holder.get('host')}, pid {holder.get('pid')}, started "
          f"{holder.get('started')}: {holder.get('command', '')}")
