"""Where the raw files come from: archives and extracted folders, checksums, and
whether a download's server can be reached at all.

`resolve_source` finds the raw data (an explicit archive, an explicit extracted
folder, the archive or folder in TFDS's manual dir, or a download), verifies an
archive's checksum, and returns a `RawSource` that reads its members. A folder
of extracted files is read as it is, with a warning, since nothing can be
verified. `check_reachable` fails a download at once when retrying cannot help.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fnmatch
import hashlib
import io
import logging
import os
import pathlib
import re
import socket
import tarfile
import time
import urllib.parse
import zipfile
import zlib
from typing import Any, Callable, Iterator

from m3oe_jax.data.raw import RawDataError, RawSourceNotFoundError

log = logging.getLogger("m3oe_jax.data")


def file_checksum(path: str | os.PathLike, algo: str) -> str:
  h = hashlib.new(algo)
  with open(path, "rb") as f:
    while True:
      block = f.read(1 << 22)
      if not block:
        break
      h.update(block)
  return h.hexdigest()


def verify_checksum(path: str | os.PathLike, expected: str,
                    expected_size: int | None = None) -> str:
  """Checks `path` against `expected` ("md5:HEX" or "sha256:HEX")."""
  algo, _, want = expected.partition(":")
  if algo not in ("md5", "sha256") or not want:
    raise ValueError(f"checksum {expected!r} must look like 'md5:HEX' or 'sha256:HEX'")
  got = file_checksum(path, algo)
  if got != want.lower():
    size = os.path.getsize(path)
    size_note = ""
    if expected_size is not None and size != expected_size:
      size_note = (f"; it has {size:,} bytes instead of {expected_size:,} "
                   "(truncated or incomplete download?)")
    raise RawDataError(
        f"{path}: checksum mismatch: {algo} is {got}, expected {want}{size_note}. "
        "The file is corrupt, truncated or a different version; download it again.")
  return f"{algo}:{got}"


@dataclasses.dataclass(frozen=True)
class ArchiveSpec:
  """Where a raw archive comes from and how to recognise it."""
  url: str
  filename: str  # name of the archive file, e.g. "ml-1m.zip"
  checksum: str  # "md5:..." or "sha256:..."
  top_dir: str  # folder the files sit under, e.g. "ml-1m" or "KuaiRand-Pure"
  size: int | None = None


@dataclasses.dataclass
class SourceOptions:
  """Where the user said the raw data is (none of it is part of the data identity).

  archive: an archive file; verified against `checksum` (default: the official one).
  extracted_dir: a folder holding the extracted files in the original layout.
  manual_dir: TFDS manual dir, searched for the archive and then for an extracted
    folder named like the archive's top folder.
  download: whether to download when nothing local is found.
  """
  archive: str = ""
  checksum: str = ""
  extracted_dir: str = ""
  manual_dir: str = ""
  download: bool = True


class RawSource:
  """Read access to the files of an archive or an extracted folder."""

  def __init__(self, kind: str, path: str, checksum: str | None):
    self.kind = kind  # "archive" | "extracted"
    self.path = str(path)
    self.checksum = checksum
    self._names: list[str] | None = None

  def describe(self) -> dict[str, Any]:
    return {"kind": self.kind, "path": self.path,
            "checksum": self.checksum or "not verified (extracted files)"}

  def names(self) -> list[str]:
    if self._names is None:
      if self.kind == "extracted":
        root = pathlib.Path(self.path)
        self._names = sorted(
            str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
      elif self.path.endswith(".zip"):
        with self._archive_errors():
          with zipfile.ZipFile(self.path) as z:
            self._names = sorted(n for n in z.namelist() if not n.endswith("/"))
      else:
        with self._archive_errors():
          with tarfile.open(self.path, "r:*") as t:
            self._names = sorted(m.name for m in t.getmembers() if m.isfile())
      if self.kind == "archive":
        twice = sorted({a for a, b in zip(self._names, self._names[1:]) if a == b})
        if twice:
          raise RawDataError(
              f"{self.path}: the archive holds several members named {twice[:5]}; "
              "their rows would be read more than once, and which copy is meant is "
              "unknown. Use the original archive (or repack it with one copy each).")
    return self._names

  def find(self, pattern: str) -> list[str]:
    """Members whose base name matches the glob `pattern`, sorted by name."""
    return [n for n in self.names() if fnmatch.fnmatch(os.path.basename(n), pattern)]

  def find_parts(self, stem: str, what: str) -> list[str]:
    """The file `<stem>.csv`, or its parts `<stem>_part<N>.csv` in part order.

    Any other file whose name starts with `stem` (a second download such as
    `<stem> (1).csv`, a renamed copy) or the same name in two folders is
    refused: read as well, its rows would silently be counted twice.
    """
    pattern = re.compile(re.escape(stem) + r"(_part(\d+))?\.csv")
    found, stray = [], []
    for n in self.names():
      base = os.path.basename(n)
      if not base.startswith(stem):
        continue
      m = pattern.fullmatch(base)
      (found if m else stray).append(n)
    if stray:
      raise RawDataError(
          f"{self.path}: {stray} {'is' if len(stray) == 1 else 'are'} not a file name "
          f"of {what} ({stem}.csv or {stem}_part<N>.csv) but starts like one (a second "
          "download or a copy?); its rows would be read twice. Remove or rename it.")
    bases = [os.path.basename(n) for n in found]
    twice = sorted({b for b in bases if bases.count(b) > 1})
    if twice:
      raise RawDataError(
          f"{self.path}: {twice} found in several folders "
          f"{sorted(n for n in found if os.path.basename(n) in twice)}; their rows "
          "would be read twice. Keep one copy of the files.")
    whole = [n for n in found if os.path.basename(n) == stem + ".csv"]
    if whole and len(found) > 1:
      raise RawDataError(
          f"{self.path}: both {whole[0]} and its parts {sorted(set(found) - set(whole))} "
          "exist; their rows would be read twice. Keep either the whole file or the "
          "parts.")
    part_no = lambda n: int(pattern.fullmatch(os.path.basename(n)).group(2) or 0)
    return sorted(found, key=part_no)

  def find_one(self, pattern: str, what: str) -> str:
    found = self.find(pattern)
    if not found:
      raise RawDataError(
          f"{self.path}: file {pattern!r} ({what}) is missing from this "
          f"{self.kind} source (it holds {len(self.names())} files)")
    if len(found) > 1:
      raise RawDataError(f"{self.path}: several files match {pattern!r}: {found}")
    return found[0]

  def display(self, member: str) -> str:
    sep = "/" if self.kind == "extracted" else ":"
    return f"{self.path}{sep}{member}"

  @contextlib.contextmanager
  def _archive_errors(self, member: str = ""):
    where = self.display(member) if member else self.path
    try:
      yield
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error,
            OSError) as e:
      if isinstance(e, FileNotFoundError):
        raise
      raise RawDataError(
          f"{where}: cannot read the archive ({type(e).__name__}: {e}); it is "
          "truncated or corrupt") from e

  @contextlib.contextmanager
  def open(self, member: str) -> Iterator[io.RawIOBase]:
    if self.kind == "extracted":
      with open(os.path.join(self.path, member), "rb") as f:
        yield f
      return
    with self._archive_errors(member):
      if self.path.endswith(".zip"):
        with zipfile.ZipFile(self.path) as z, z.open(member) as f:
          yield _ErrorWrappingReader(f, self, member)
      else:
        with tarfile.open(self.path, "r:*") as t:
          f = t.extractfile(member)
          yield _ErrorWrappingReader(f, self, member)


class _ErrorWrappingReader:
  """Turns decompression errors raised while reading into RawDataErrors."""

  def __init__(self, f, source: RawSource, member: str):
    self._f, self._source, self._member = f, source, member

  def read(self, n: int = -1) -> bytes:
    with self._source._archive_errors(self._member):  # pylint: disable=protected-access
      return self._f.read(n)


def _instructions(spec: ArchiveSpec, manual_dir: str) -> str:
  return (
      f"Download {spec.url} ({spec.checksum}"
      + (f", {spec.size:,} bytes" if spec.size else "")
      + f") and either put {spec.filename} in {manual_dir}, set "
      f"config.data.archive to its path, or set config.data.extracted_dir to a "
      f"folder holding its extracted files (the folder {spec.top_dir}/ "
      "from the archive).")


def resolve_source(spec: ArchiveSpec, options: SourceOptions,
                   download_fn: Callable[[str], str] | None) -> RawSource:
  """Finds the raw data, verifying the archive checksum where there is one.

  Order: an explicit archive, an explicit extracted folder, the archive in the
  manual dir, an extracted folder in the manual dir, a download.
  """
  expected = options.checksum or spec.checksum
  expected_size = spec.size if not options.checksum else None
  if options.archive:
    path = os.path.expanduser(options.archive)
    if not os.path.isfile(path):
      raise RawSourceNotFoundError(
          f"config.data.archive={path!r} does not exist. "
          + _instructions(spec, options.manual_dir or "<manual_dir>"))
    return RawSource("archive", path, verify_checksum(path, expected, expected_size))
  if options.extracted_dir:
    path = os.path.expanduser(options.extracted_dir)
    if not os.path.isdir(path):
      raise RawSourceNotFoundError(
          f"config.data.extracted_dir={path!r} is not a folder. "
          + _instructions(spec, options.manual_dir or "<manual_dir>"))
    log.warning("reading extracted files in %s as they are: no checksum was checked",
                path)
    return RawSource("extracted", path, None)
  manual = os.path.expanduser(options.manual_dir) if options.manual_dir else ""
  if manual:
    archive = os.path.join(manual, spec.filename)
    if os.path.isfile(archive):
      return RawSource("archive", archive,
                       verify_checksum(archive, expected, expected_size))
    extracted = os.path.join(manual, spec.top_dir)
    if os.path.isdir(extracted):
      log.warning("reading extracted files in %s as they are: no checksum was "
                  "checked", extracted)
      return RawSource("extracted", extracted, None)
  if options.download and download_fn is not None:
    try:
      path = download_fn(spec.url)
    except Exception as e:  # pylint: disable=broad-except
      raise RawSourceNotFoundError(
          f"downloading {spec.url} failed ({type(e).__name__}: {e}). "
          + _instructions(spec, manual or "<manual_dir>")) from e
    return RawSource("archive", str(path),
                     verify_checksum(path, expected, expected_size))
  raise RawSourceNotFoundError(
      f"no raw data for {spec.filename}: not in manual_dir {manual or '(unset)'}, "
      "no config.data.archive or config.data.extracted_dir given"
      + ("" if options.download else ", and config.data.download is False")
      + ". " + _instructions(spec, manual or "<manual_dir>"))


class UnreachableError(OSError):
  """A download's server cannot be reached for a reason retrying will not fix."""


# Connection failures that retrying within minutes does not fix.
PERMANENT_CONNECT_ERRNOS = frozenset(
    (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN,
     errno.EADDRNOTAVAIL))
RESOLVE_AGAIN_WAIT_S = 2.0


def check_reachable(url: str, timeout_s: float = 10.0) -> None:
  """Raises UnreachableError at once when the server of `url` (or the proxy the
  download goes through) cannot be reached for a reason retrying will not fix:
  its name does not resolve, or every address refuses the connection or has no
  route. A timeout or any other failure is left to the download's retries.

  TFDS's download retries every failure ten times with a growing backoff, which
  made an offline run wait 206 s for a name that never resolves.
  """
  import requests  # pylint: disable=g-import-not-at-top
  proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
  target = urllib.parse.urlsplit(proxy if proxy else url)
  host = target.hostname
  default_ports = {"http": 80, "https": 443, "ftp": 21}
  if not host or target.scheme not in default_ports:
    return
  port = target.port or default_ports[target.scheme]
  via = f" (the proxy for {url})" if proxy else ""
  for again in (True, False):
    try:
      addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
      break
    except socket.gaierror as e:
      if again and e.errno == socket.EAI_AGAIN:  # the resolver may answer a retry
        time.sleep(RESOLVE_AGAIN_WAIT_S)
        continue
      raise UnreachableError(
          f"the name {host}{via} does not resolve ({e.strerror})") from e
  failures = []
  for family, kind, proto, _, address in addresses:
    with socket.socket(family, kind, proto) as sock:
      sock.settimeout(timeout_s)
      try:
        sock.connect(address)
        return
      except OSError as e:
        if e.errno not in PERMANENT_CONNECT_ERRNOS:
          return  # a timeout or the like: the download's retries may get through
        failures.append(f"{address[0]}: {e.strerror}")
  raise UnreachableError(f"{host}:{port}{via} cannot be reached ({'; '.join(failures)})")
