"""Paths the user gives: local folders (relative or with `~`) and URLs alike.

URLs (`gs://bucket/run`) go through etils' epath, which uses fsspec (gcsfs for
gs://); orbax writes the arrays through TensorStore's own GCS driver.
"""

from __future__ import annotations

import errno
import io
import os
import shutil

import fsspec
from etils import epath

from m3oe_jax.errors import ConfigError, WorkdirError

# Every listing of a bucket asks the bucket: TensorStore and other processes (a
# trainer beside an evaluation) write it behind gcsfs's back, and gcsfs would
# otherwise answer from the listings it saw first.
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)


def is_url(path: str | os.PathLike) -> bool:
  """Whether `path` names a remote location (`gs://...`, `s3://...`)."""
  return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> epath.Path:
  """`path` as an absolute `epath.Path`: `~` expanded and a relative local path
  made absolute against the working directory (orbax and TensorStore need
  absolute paths); a URL is kept as it is."""
  text = os.fspath(path)
  if is_url(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def storage_error(where: str | os.PathLike, error: Exception) -> WorkdirError:
  """The one-line error for a URL (`where` names it) whose storage could not be
  reached, refused the credentials, or lacks its filesystem package."""
  if isinstance(error, ImportError):
    return WorkdirError(f"{where} needs a package that is not installed: {error} (gs:// "
                        "comes with `pip install -r requirements.txt` or `pip install "
                        "m3oe_jax[gcs]`)")
  lines = str(error).strip().splitlines()
  detail = f"{type(error).__name__}: {lines[0][:200] if lines else ''}"
  return WorkdirError(
      f"{where} cannot be reached or written ({detail}). Check the credentials (`gcloud auth "
      "application-default login`, or the VM's service account and its storage scope), "
      "that the bucket exists and that they may write to it, and the network; or use a "
      "local --workdir.")


def exists(path: str | os.PathLike) -> bool:
  """`resolve(path).exists()`, with the failure to reach a URL's storage as a
  WorkdirError (storage_error)."""
  resolved = resolve(path)
  try:
    return resolved.exists()
  except Exception as e:  # pylint: disable=broad-except
    if not is_url(resolved):
      raise
    raise storage_error(resolved, e) from None


def append_text(path: epath.Path, text: str) -> None:
  """Adds `text` at the end of a file. An object store cannot append: there the
  object is read and written again whole."""
  if not is_url(path):
    with path.open("a") as f:
      f.write(text)
    return
  previous = path.read_text() if path.exists() else ""
  path.write_text(previous + text)


def move(source: epath.Path, target: epath.Path) -> None:
  """Renames a folder. On an object store, whose folders are only name prefixes
  (epath's rename wants the target's folder to exist), each object is copied and
  the original deleted."""
  if not is_url(source):
    source.rename(target)
    return
  filesystem, source_path = fsspec.core.url_to_fs(os.fspath(source))
  filesystem.copy(source_path, fsspec.core.url_to_fs(os.fspath(target))[1], recursive=True)
  filesystem.rm(source_path, recursive=True)


class WholeObjectWriter:
  """A file in an object store that grows: kept in memory and uploaded whole at
  each flush that has something new (an object cannot be appended to)."""

  def __init__(self, path: str | os.PathLike):
    self.path = epath.Path(path)
    self.buffer = io.BytesIO()
    self.uploaded = 0

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    if self.buffer.tell() != self.uploaded:
      self.path.write_bytes(self.buffer.getvalue())
      self.uploaded = self.buffer.tell()

  def close(self) -> None:
    self.flush()


class _WholeObjectWriters:
  """tensorboardX's writer factory for gs://. Its own uploads through
  google-cloud-storage, again when collected after closing, and then retries
  for two minutes if the storage has gone."""

  def open(self, path: str) -> WholeObjectWriter:
    return WholeObjectWriter(path)

  def directory_check(self, path: str) -> None:
    del path


def write_tensorboard_through_epath() -> None:
  """Makes tensorboardX write gs:// event files as every other file here is."""
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  record_writer.register_writer_factory("gs", _WholeObjectWriters())


def is_disk_full(error: Exception | None) -> bool:
  """Whether an error (an OSError, or TensorStore's message) is a full device."""
  if isinstance(error, OSError) and error.errno == errno.ENOSPC:
    return True
  text = str(error or "")
  return "No space left on device" in text or "os_error_code='28'" in text


def free_bytes(folder: epath.Path) -> int | None:
  """The free bytes of a local folder's device (None for a URL or when unknown)."""
  if is_url(folder):
    return None
  try:
    return shutil.disk_usage(folder).free
  except OSError:
    return None


def folder_bytes(folder: epath.Path) -> int:
  """The bytes of the files under a local folder (0 for a URL)."""
  if is_url(folder):
    return 0
  total = 0
  for parent, _, files in os.walk(folder):
    for name in files:
      try:
        total += os.lstat(os.path.join(parent, name)).st_size
      except OSError:
        pass
  return total


def mib(size: int | None) -> str:
  """A size for messages."""
  return "an unknown amount" if size is None else f"{size / 2**20:.1f} MiB"


def read_npz(field: str, path, what: str) -> tuple[epath.Path, dict]:
  """(the resolved path, {name: array}) of the `.npz` a config field names; a
  missing or unreadable file is a ConfigError naming `config.<field>` and saying it
  should hold `what`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  path = resolve(path)
  where = f"config.{field}={path}"
  try:
    with path.open("rb") as f, np.load(f) as npz:
      return path, {name: np.asarray(npz[name]) for name in npz.files}
  except FileNotFoundError:
    raise ConfigError(f"{where}: no such file") from None
  except (OSError, ValueError) as e:
    raise ConfigError(f"{where}: not a readable .npz of {what} ({e})") from None
