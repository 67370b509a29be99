"""An exclusive lock on one file whose holder is recorded in the file.

`FileLock` takes an `fcntl.flock` on its file, which the kernel drops when the
holder dies, however it dies (even by SIGKILL), so a lock never outlives its
process. The holder writes a record (a dict: host, pid, start time, ...) into
the file for whoever finds the lock taken, and clears it on release, so a
record found when the lock is taken was left by a holder that died.

Taking it either fails at once when it is held (`timeout_s=0`), waits up to a
time, or waits for as long as it takes (`timeout_s=None`). `flock` works on
local disks and on NFS (Linux emulates it with POSIX locks there).

Used by the preparation of a dataset folder (`data/raw/lock.py`); it knows
nothing of what it protects.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from typing import Any, Callable, Mapping

# The errors of a non-blocking flock on a file another process holds (EACCES:
# POSIX-lock emulations such as NFS's).
HELD_ERRNOS = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
RECORD_BYTES = 1 << 16  # the most of a record that is read


class LockHeldError(Exception):
  """Another process holds the lock (and still held it when the wait ended)."""

  def __init__(self, path: str, holder: dict | None):
    super().__init__(f"{path} is held by {holder or 'an unknown holder'}")
    self.path = path
    self.holder = holder


class FileLock:
  """`acquire(record)` locks `path` (creating it and its folder) and writes
  `record()` into it; `release()` clears the record, or deletes the file when
  `remove_on_release`, and unlocks.

  A lock whose file is deleted while someone waits for it (a releasing holder
  with `remove_on_release`) is taken on the file that replaces it, never on
  the deleted one.
  """

  def __init__(self, path: str | os.PathLike, *, remove_on_release: bool = False,
               poll_s: float = 0.5):
    self.path = os.fspath(path)
    self.remove_on_release = remove_on_release
    self.poll_s = poll_s
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def read_holder(self) -> dict | None:
    """The record in the file now (None: none, or unreadable)."""
    try:
      with open(self.path) as f:
        return json.loads(f.read() or "null")
    except (OSError, ValueError):
      return None

  def acquire(self, record: Callable[[], Mapping[str, Any]], *,
              timeout_s: float | None = None,
              on_wait: Callable[[dict | None], None] | None = None,
              on_no_flock: Callable[[OSError], None] | None = None) -> dict | None:
    """Takes the lock and writes `record()` (called once the lock is taken, so
    its times are the taking's); returns the record a holder that died left in
    the file (None when it was empty).

    While the lock is held elsewhere, `on_wait(holder record)` is called after
    every try, and tries repeat every `poll_s` until `timeout_s` has passed
    (None: no limit; 0: a single try); then LockHeldError. A file system
    without flock raises its OSError, unless `on_no_flock(error)` is given:
    it is called, and the file is used without a lock. An error writing the
    record is raised with nothing held.
    """
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    start = time.monotonic()
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno in HELD_ERRNOS:
          os.close(fd)
          holder = self.read_holder()
          if on_wait is not None:
            on_wait(holder)
          if timeout_s is not None and time.monotonic() - start >= timeout_s:
            raise LockHeldError(self.path, holder) from None
          time.sleep(self.poll_s)
          continue
        try:
          if on_no_flock is None:
            raise
          on_no_flock(e)
        except BaseException:
          os.close(fd)
          raise
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if not same:  # the holder we waited for deleted the file: lock the new one
        os.close(fd)
        continue
      try:
        left = os.read(fd, RECORD_BYTES).decode("utf8", errors="replace")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dict(record())).encode(), 0)
        os.fsync(fd)
      except OSError:
        os.close(fd)
        raise
      self._fd = fd
      if not left.strip():
        return None
      try:
        return json.loads(left)
      except ValueError:
        return {"record": left[:200]}

  def release(self) -> None:
    """Clears the record (or deletes the file) and unlocks; a no-op when not held."""
    if self._fd is None:
      return
    if self.remove_on_release:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(self.path)  # before closing, so no one locks a deleted file
    else:
      with contextlib.suppress(OSError):
        os.ftruncate(self._fd, 0)
    os.close(self._fd)  # closing drops the flock
    self._fd = None
