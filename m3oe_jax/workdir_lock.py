"""One writer per workdir: an exclusive lock held by the job that trains in it.

The lock is `fcntl.flock` on `<workdir>/lock`, taken by process 0 of the job
(the others learn the outcome from it), so the kernel releases it whenever the
holder dies, however it dies: a lock left by a killed trainer never blocks the
rerun. The file records the holder (host, pid, start time, command) for the
message a second trainer gets. `flock` works on local disks and on NFS (Linux
emulates it with POSIX locks there); object stores such as gs:// have no locks,
and a workdir there is used without one (a warning says so).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Callable

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from m3oe_jax import paths
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
    self._fd = None
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
    try:
      self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"--workdir={self.workdir} is not writable ({e.strerror}: "
                         f"{self.path}); choose a writable --workdir") from None
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      holder = self._holder()
      os.close(self._fd)
      self._fd = None
      raise WorkdirError(
          f"--workdir={self.workdir} is in use by another trainer ({holder}; lock file "
          f"{self.path}). Wait for it to finish or stop it, or use another --workdir."
      ) from None
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"),
              "command": " ".join(sys.argv)}
    try:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)
      os.fsync(self._fd)
    except OSError as e:
      raise WorkdirError(f"--workdir={self.workdir} is not writable ({e.strerror}: "
                         f"{self.path}); choose a writable --workdir") from None
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

  def _holder(self) -> str:
    try:
      record = json.loads(os.pread(self._fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
      record = {}
    if not record:
      return "holder unknown"
    return (f"host {record.get('host')}, pid {record.get('pid')}, started "
            f"{record.get('started')}: {record.get('command', '')}")

  def _release(self) -> None:
    if self._fd is not None:
      try:
        os.ftruncate(self._fd, 0)
      except OSError:
        pass
      os.close(self._fd)  # closing releases the flock
      self._fd = None
