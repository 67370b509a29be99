"""file_lock.FileLock: held elsewhere is refused at once or waited for, the
holder's record is in the file while it holds it, and a dead holder's record
is handed to the next one. (The preparation lock's processes, waits and
SIGKILLs are in tests/data/test_prepare_interrupted.py.)"""

import json
import os
import threading
import time

import pytest

from m3oe_jax import file_lock


def record(**extra):
  return lambda: {"pid": os.getpid(), **extra}


def test_a_held_lock_is_refused_at_once_naming_the_holder(tmp_path):
  path = tmp_path / "sub" / "lock"
  first, second = file_lock.FileLock(path), file_lock.FileLock(path)
  assert first.acquire(record(who="first")) is None
  assert first.held and json.loads(path.read_text()) == {"pid": os.getpid(), "who": "first"}
  started = time.monotonic()
  with pytest.raises(file_lock.LockHeldError) as info:
    second.acquire(record(who="second"), timeout_s=0)
  assert time.monotonic() - started < 1
  assert info.value.holder == {"pid": os.getpid(), "who": "first"}
  assert not second.held
  first.release()
  assert path.exists() and path.read_text() == ""  # the record cleared, the file kept
  assert second.acquire(record(who="second"), timeout_s=0) is None
  second.release()


def test_a_waiter_takes_the_lock_once_it_is_released_and_deleted(tmp_path):
  path = tmp_path / "lock"
  holder = file_lock.FileLock(path, remove_on_release=True, poll_s=0.01)
  holder.acquire(record(who="holder"))
  seen = []
  waiter = file_lock.FileLock(path, remove_on_release=True, poll_s=0.01)
  thread = threading.Thread(target=lambda: seen.append(
      waiter.acquire(record(who="waiter"), on_wait=lambda h: seen.append(h) if not seen else None)))
  thread.start()
  time.sleep(0.1)
  holder.release()
  thread.join(10)
  assert seen == [{"pid": os.getpid(), "who": "holder"}, None]
  assert json.loads(path.read_text())["who"] == "waiter"
  waiter.release()
  assert not path.exists()


def test_waiting_ends_after_the_timeout(tmp_path):
  path = tmp_path / "lock"
  holder = file_lock.FileLock(path)
  holder.acquire(record())
  with pytest.raises(file_lock.LockHeldError):
    file_lock.FileLock(path, poll_s=0.01).acquire(record(), timeout_s=0.05)
  holder.release()


def test_a_dead_holders_record_is_returned(tmp_path):
  path = tmp_path / "lock"
  path.write_text(json.dumps({"pid": 12345, "host": "gone"}))  # no one holds the flock
  lock = file_lock.FileLock(path)
  assert lock.acquire(record()) == {"pid": 12345, "host": "gone"}
  lock.release()
  path.write_text("not json")
  assert lock.acquire(record()) == {"record": "not json"}
  lock.release()
