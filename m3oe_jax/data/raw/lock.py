"""One preparation of a dataset folder at a time, and nothing left by a dead one.

`PreparationLock` is the right to prepare one folder: a `FileLock` on the file
`<folder>.lock` beside it. Whoever finds it taken waits, then uses the result;
whoever takes it after a holder died (its record still in the file) deletes
what that preparation left (`remove_leftovers`) before preparing anew.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shutil
import socket
import time

from m3oe_jax import file_lock
from m3oe_jax.errors import UserError

log = logging.getLogger("m3oe_jax.data")

LOCK_SUFFIX = ".lock"
LOCK_POLL_S = 0.5


class PreparationLockError(UserError):
  """Another preparation of the same dataset did not finish in time."""


class PreparationLock:
  """The right to prepare one dataset folder: the file `<folder>.lock` beside it.

  The holder keeps an exclusive `flock` on that file, which the kernel drops
  when the holder dies (even by SIGKILL), and writes its pid, host and start
  time into it for whoever waits. A holder that finishes deletes the file, so
  a file that still holds a record when the lock is taken was left by a
  preparation that died; `acquire` returns that record (else None).
  """

  def __init__(self, folder: str | os.PathLike, timeout_s: float | None = None):
    self.folder = os.path.abspath(os.fspath(folder))
    self.path = self.folder + LOCK_SUFFIX
    self.timeout_s = timeout_s
    self._lock = file_lock.FileLock(self.path, remove_on_release=True, poll_s=LOCK_POLL_S)

  def acquire(self) -> dict | None:
    reported = None

    def waiting(holder: dict | None) -> None:
      nonlocal reported
      if holder and holder != reported:
        log.warning("%s is being prepared by pid %s on %s since %s (lock %s); waiting "
                    "for it to finish, then using its result", self.folder,
                    holder.get("pid"), holder.get("host"), holder.get("since"), self.path)
        reported = holder

    def no_flock(error: OSError) -> None:
      log.warning("%s: cannot lock (%s); nothing stops a concurrent preparation of %s",
                  self.path, error, self.folder)

    def record() -> dict:
      return {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "time": time.time(),
              "folder": self.folder}

    try:
      return self._lock.acquire(record, timeout_s=self.timeout_s, on_wait=waiting,
                                on_no_flock=no_flock)
    except file_lock.LockHeldError as e:
      holder = e.holder or {}
      raise PreparationLockError(
          f"{self.path}: another preparation of {self.folder} (pid {holder.get('pid')} "
          f"on {holder.get('host')}) still holds the lock after {self.timeout_s:.0f} s; "
          "let it finish, or stop it and run again") from None

  def release(self) -> None:
    self._lock.release()

  def __enter__(self) -> dict | None:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def remove_leftovers(folder: str | os.PathLike, scratch: str | None = None) -> list[str]:
  """Deletes what an interrupted preparation of `folder` (`.../<config>/<version>`)
  left: TFDS's `incomplete.XXXXXX_<version>` folders beside it, and `scratch`
  (the preparation's own spill folder, if outside them). Only while holding
  the folder's PreparationLock, when no live preparation can own them."""
  folder = pathlib.Path(folder)
  pattern = re.compile(r"incomplete\.[A-Z0-9]{6}_" + re.escape(folder.name))
  found = [p for p in sorted(folder.parent.glob("incomplete.*")) if pattern.fullmatch(p.name)]
  if scratch and os.path.lexists(scratch):
    found.append(pathlib.Path(scratch))
  for p in found:
    if p.is_dir() and not p.is_symlink():
      shutil.rmtree(p)
    else:
      p.unlink()
  return [str(p) for p in found]
