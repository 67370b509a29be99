"""Shared machinery for preparing the raw KuaiRand and MovieLens files.

The builders in `kuairand.py` and `movielens.py` only know their formats; this
module does everything else, in a way that never holds the raw logs in memory:

1. *Source*: find the original archive (explicit path, TFDS `manual_dir`, or a
   download), verify its checksum, or accept a folder of extracted files in the
   original layout (with a warning, since nothing can be verified).
2. *Ingest*: read CSV-like files in blocks of whole lines with pyarrow, checking
   every value; each dataset turns a block into a `Chunk` of raw columns
   (domain, labels, raw sparse codes, raw dense values, sort keys), which is
   spilled to flat files in a scratch directory.
3. *Split*: temporal (by time, then user, then item, then file order), seeded
   random, or file order (the reference code's), with exact sizes from the
   configured ratios. The temporal cut points
   are found by exact selection over the spilled time column, so no sort of
   the whole data set is needed.
4. *Vocabularies and statistics*: the dense statistics always from the
   training rows only; the vocabularies from the training rows only
   (`vocabulary='train'`, the default) or from the rows of every split
   (`vocabulary='all_rows'`, as the authors' reference code label-encodes: a
   value seen only in validation/test gets an id of its own, whose embedding
   row is never trained). Id 0 is the out-of-vocabulary id of every sparse
   feature (never produced by the prepared splits under 'all_rows').
5. *Encode* every split into columnar `.npy` files (what training gathers
   from) and yield blocks of rows for the TFDS array_record files.

Errors about the input are `RawDataError`s that name the file, the line and the
column. All output goes into the directory TFDS prepares in (its
`incomplete.*` directory, renamed only on success), so a failed run leaves
nothing that looks complete.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import fcntl
import fnmatch
import functools
import hashlib
import io
import json
import logging
import os
import pathlib
import re
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.parse
import zipfile
import zlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from m3oe_jax.data import integrity
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.errors import ConfigError, UserError

log = logging.getLogger("m3oe_jax.data")

SPLITS = ("train", "validation", "test")
SPLIT_KINDS = ("temporal", "random", "file_order")
# Which rows the sparse vocabularies are built from (settings key `vocabulary`).
VOCABULARIES = ("train", "all_rows")
DEFAULT_VOCABULARY = "train"
OOV_ID = 0
# Raw code of a missing value of an integer-valued sparse feature.
MISSING = np.iinfo(np.int64).min
# Largest time value accepted: far beyond any unix time in ms, and it keeps the
# split's arithmetic on times inside int64.
MAX_TIME = 2**62
BLOCK_ROWS = 8192
READ_BLOCK_BYTES = 1 << 24  # raw text read per parse call
COLUMNAR_DIR = "columnar"
VOCAB_DIR = "vocab"
SCHEMA_FILE = "m3oe_schema.json"


def _is_int(value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, (int, np.integer)):
    return True
  return isinstance(value, (float, np.floating)) and float(value).is_integer()


def config_int(value: Any, field: str, lo: int | None = None, hi: int | None = None,
               what: str = "") -> int:
  """`value` as an int in [lo, hi]; anything else is a ConfigError naming `field`."""
  bounds = (f" in {lo}..{hi}" if lo is not None and hi is not None
            else f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")
  if not _is_int(value) or (lo is not None and int(value) < lo) or (
      hi is not None and int(value) > hi):
    raise ConfigError(f"config.data.{field}={value!r}: must be an integer{bounds}"
                      + (f" ({what})" if what else "") + "; set it to such a value")
  return int(value)


def config_int_list(values: Any, field: str, lo: int | None = None,
                    hi: int | None = None, what: str = "") -> list[int]:
  if not isinstance(values, (list, tuple)):
    raise ConfigError(f"config.data.{field}={values!r}: must be a list of integers")
  try:
    out = [config_int(v, field, lo, hi, what) for v in values]
  except ConfigError as e:
    raise ConfigError(f"config.data.{field}={list(values)!r} holds "
                      + str(e).split("=", 1)[1]) from None
  if len(set(out)) != len(out):
    raise ConfigError(f"config.data.{field}={list(values)!r}: holds a value twice; "
                      "list each value once")
  return out


def config_ratios(values: Any) -> list[float]:
  """The three split ratios, refused unless finite and positive (a zero ratio
  leaves its split empty)."""
  field = "config.data.split_ratios"
  try:
    ratios = [float(r) for r in values] if not isinstance(values, (str, bytes)) else None
  except (TypeError, ValueError):
    ratios = None
  if (ratios is None or len(ratios) != 3 or not all(np.isfinite(ratios))
      or any(r <= 0 for r in ratios) or any(isinstance(r, (bool, str)) for r in values)):
    raise ConfigError(f"{field}={values!r}: must be three finite positive numbers "
                      "(train, validation, test), e.g. [8, 1, 1]")
  return ratios


def check_features_and_split(dataset: str, settings: Mapping[str, Any],
                             sparse_known: Iterable[str], dense_known: Sequence[str]) -> None:
  """Refuses unknown feature names, split kinds, ratios, seeds and vocabularies."""
  for key, known in (("sparse_features", sorted(sparse_known)),
                     ("dense_features", list(dense_known))):
    chosen = settings[key]
    if not isinstance(chosen, (list, tuple)):
      raise ConfigError(f"{dataset}: config.data.{key}={chosen!r} must be a list of "
                        f"names; known: {known}")
    bad = [f for f in chosen if f not in known]
    if bad:
      kind = key.split("_")[0]
      raise ConfigError(f"{dataset}: unknown {kind} features {bad} in "
                        f"config.data.{key}; known: {known}")
    if len(set(chosen)) != len(chosen):
      raise ConfigError(f"{dataset}: config.data.{key}={list(chosen)} names a feature "
                        "twice; list each once")
  if not settings["sparse_features"] and not settings["dense_features"]:
    raise ConfigError(f"{dataset}: config.data.sparse_features and "
                      "config.data.dense_features are both empty; choose some features")
  if settings["split"] not in SPLIT_KINDS:
    raise ConfigError(f"{dataset}: config.data.split must be one of {SPLIT_KINDS}, "
                      f"got {settings['split']!r}")
  config_ratios(settings["split_ratios"])
  config_int(settings["split_seed"], "split_seed", 0, 2**63 - 1,
             "the seed of the random split")
  vocabulary = settings.get("vocabulary", DEFAULT_VOCABULARY)
  if vocabulary not in VOCABULARIES:
    raise ConfigError(f"{dataset}: config.data.vocabulary must be one of {VOCABULARIES} "
                      f"('train': ids from the training rows, unseen values share the "
                      f"out-of-vocabulary id 0; 'all_rows': every value of every split "
                      f"gets its own id), got {vocabulary!r}")
  checksum = settings.get("checksum", "")
  if checksum and not re.fullmatch(r"(md5:[0-9a-fA-F]{32}|sha256:[0-9a-fA-F]{64})",
                                   str(checksum)):
    raise ConfigError(f"{dataset}: config.data.archive_checksum={checksum!r} must look "
                      "like 'md5:<32 hex digits>' or 'sha256:<64 hex digits>', or be "
                      "'' for the official archive's checksum")


class RawDataError(UserError, ValueError):
  """The raw input is malformed; the message names the file, line and column."""


class RawSourceNotFoundError(UserError, FileNotFoundError):
  """No raw data was found; the message says what to download and where to put it."""


# ----------------------------------------------------------------------------
# Checksums and sources.


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


# ----------------------------------------------------------------------------
# Reading delimited text in blocks.


@dataclasses.dataclass
class TextFormat:
  delimiter: str = ","
  header: bool = True
  column_names: tuple[str, ...] = ()  # for files without a header
  encoding: str = "utf8"
  quote: bool = True
  multi_char_delimiter: bytes = b""  # replaced by `delimiter` before parsing


def _check_encoding(head: bytes, where: str, encoding: str) -> None:
  if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head[:65536]:
    raise RawDataError(
        f"{where}: unreadable encoding: the file holds NUL bytes or a UTF-16 "
        f"byte-order mark, but must be {encoding} text")


def iter_line_blocks(f, where: str, block_bytes: int, encoding: str
                     ) -> Iterator[tuple[int, bytes]]:
  """Yields (number of lines before the block, block of whole lines)."""
  carry = b""
  lines_before = 0
  first = True
  while True:
    data = f.read(block_bytes)
    if first:
      _check_encoding(data, where, encoding)
      first = False
    if not data:
      if carry.strip():
        yield lines_before, carry
      return
    data = carry + data
    cut = data.rfind(b"\n")
    if cut < 0:
      carry = data
      continue
    block, carry = data[:cut + 1], data[cut + 1:]
    yield lines_before, block
    lines_before += block.count(b"\n")


def _header_names(first_line: bytes, where: str, fmt: TextFormat) -> list[str]:
  try:
    text = first_line.decode(fmt.encoding)
  except UnicodeDecodeError as e:
    raise RawDataError(f"{where}, line 1: unreadable encoding in the header ({e})") from e
  names = next(csv.reader([text.strip("\r\n")], delimiter=fmt.delimiter))
  return [n.strip().lstrip("\ufeff") for n in names]


def _locate_bad_line(block: bytes, fmt: TextFormat, names: Sequence[str],
                     message: str) -> tuple[int | None, str | None, str | None]:
  """Finds (line offset in block, column, value) of the error pyarrow reported."""
  text_lines = block.split(b"\n")
  m = re.search(r"column #(\d+)", message)
  col_index = int(m.group(1)) if m else None
  col_name = names[col_index] if col_index is not None and col_index < len(names) else None
  m = re.search(r"Row #(\d+)", message)
  if m:  # pyarrow named the row (1-based within the block)
    offset = int(m.group(1)) - 1
    raw = text_lines[offset] if offset < len(text_lines) else b""
    return offset, col_name, raw.decode(fmt.encoding, errors="replace")[:80]
  numeric = re.search(r"conversion error to (u?int\d*|double|float)", message)
  for i, raw in enumerate(text_lines):
    if not raw.strip():
      continue
    try:
      line = raw.decode(fmt.encoding)
    except UnicodeDecodeError:
      return i, col_name, raw.decode(fmt.encoding, errors="replace")[:80]
    fields = next(csv.reader([line.rstrip("\r")], delimiter=fmt.delimiter,
                             quoting=csv.QUOTE_MINIMAL if fmt.quote else csv.QUOTE_NONE))
    if len(fields) != len(names):
      return i, None, line[:80]
    if col_index is not None and numeric:
      value = fields[col_index]
      try:
        if value != "":
          int(value) if "int" in numeric.group(1) else float(value)
      except ValueError:
        return i, col_name, value
  return None, col_name, None


def read_blocks(source: RawSource, member: str, fmt: TextFormat,
                columns: Mapping[str, pa.DataType], *, block_bytes: int | None = None,
                line_hashes: bool = False) -> Iterator[tuple]:
  """Yields (file line number of the block's first row, table of `columns`).

  Every requested column must exist (a clear error lists the missing ones);
  values are converted to the requested types, and a value that does not
  convert is reported with its file, line and column. With `line_hashes`,
  each tuple also holds a 64-bit hash of every row's whole line (equal lines,
  equal hashes), for counting exact duplicate rows.
  """
  where = source.display(member)
  with source.open(member) as f:
    blocks = iter_line_blocks(f, where, block_bytes or READ_BLOCK_BYTES, fmt.encoding)
    if fmt.header:
      try:
        _, first = next(blocks)
      except StopIteration:
        raise RawDataError(f"{where}: the file is empty (no header line)") from None
      nl = first.find(b"\n")
      header_line, rest = (first, b"") if nl < 0 else (first[:nl + 1], first[nl + 1:])
      names = _header_names(header_line, where, fmt)
      blocks = _chain_first(((1, rest),) if rest.strip() else (), blocks)
    else:
      names = list(fmt.column_names)
    missing = [c for c in columns if c not in names]
    if missing:
      raise RawDataError(
          f"{where}: missing column(s) {missing}; the file has columns {names}")
    convert = pa_csv.ConvertOptions(
        column_types=dict(columns), include_columns=list(columns),
        strings_can_be_null=False, check_utf8=True)
    parse_opts = pa_csv.ParseOptions(delimiter=fmt.delimiter,
                                     quote_char='"' if fmt.quote else False)
    for lines_before, block in blocks:
      if fmt.multi_char_delimiter:
        block = block.replace(fmt.multi_char_delimiter, fmt.delimiter.encode())
      # One pyarrow block per call, so that the row numbers it reports count
      # from the start of `block`.
      read_opts = pa_csv.ReadOptions(column_names=names, use_threads=False,
                                     encoding=fmt.encoding,
                                     block_size=max(len(block) + 1, 1 << 16))
      try:
        table = pa_csv.read_csv(io.BytesIO(block), read_options=read_opts,
                                parse_options=parse_opts, convert_options=convert)
      except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise _parse_error(e, block, fmt, names, where, lines_before) from e
      if not line_hashes:
        yield lines_before + 1, table
        continue
      rows = [l.rstrip(b"\r") for l in block.split(b"\n")]
      hashes = np.fromiter((hash(l) for l in rows if l), np.int64, count=-1)
      if len(hashes) != table.num_rows:
        raise RawDataError(
            f"{where}, lines {lines_before + 1}..{lines_before + len(rows)}: "
            f"{table.num_rows} rows in {len(hashes)} lines (blank or quoted line "
            "breaks inside a row?); this file must hold one row per line")
      yield lines_before + 1, table, hashes


def _parse_error(e: Exception, block: bytes, fmt: TextFormat, names: Sequence[str],
                 where: str, lines_before: int) -> RawDataError:
  msg = str(e)
  offset, col, text = _locate_bad_line(block, fmt, names, msg)
  if text is not None and fmt.multi_char_delimiter:
    text = text.replace(fmt.delimiter, fmt.multi_char_delimiter.decode(fmt.encoding))
  line = f", line {lines_before + offset + 1}" if offset is not None else ""
  col_s = f", column {col!r}" if col else ""
  m = re.search(r"Expected (\d+) columns, got (\d+)", msg)
  bad_value = re.search(r"invalid value '([^']*)'", msg)
  if "UTF8" in msg or "utf8" in msg.lower() or "decode" in msg.lower():
    kind = f"unreadable encoding (not valid {fmt.encoding})"
  elif m:
    kind = (f"wrong number of fields, {m.group(2)} instead of {m.group(1)} (truncated "
            "file or malformed row)")
  elif "conversion error" in msg:
    kind = "not a number" if bad_value else "cannot convert the value"
    if bad_value:
      kind += f": {bad_value.group(1)!r}"
  else:
    kind = msg
  row = f"; the row reads {text!r}" if text is not None else ""
  return RawDataError(f"{where}{line}{col_s}: {kind}{row}")


def _chain_first(first: Iterable[tuple[int, bytes]], rest: Iterator[tuple[int, bytes]]
                 ) -> Iterator[tuple[int, bytes]]:
  yield from first
  yield from rest


def column_int(table: pa.Table, name: str, where: str, first_line: int, *,
               allow_missing: bool = False) -> np.ndarray:
  """An integer column as int64; missing values are an error unless allowed."""
  col = table.column(name)
  if col.null_count:
    if not allow_missing:
      bad = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
      raise RawDataError(f"{where}, line {first_line + bad}, column {name!r}: "
                         "missing value")
    return col.fill_null(MISSING).to_numpy().astype(np.int64)
  return col.to_numpy().astype(np.int64)


def column_float(table: pa.Table, name: str, where: str, first_line: int, *,
                 check_finite: bool) -> np.ndarray:
  col = table.column(name)
  values = col.to_numpy(zero_copy_only=False).astype(np.float64)
  if check_finite:
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
      raise RawDataError(
          f"{where}, line {first_line + int(bad[0])}, column {name!r}: dense value "
          f"{values[bad[0]]} is missing, NaN or infinite")
  return values


def float_codes(table: pa.Table, name: str, where: str, first_line: int) -> np.ndarray:
  """A categorical column written as numbers (possibly with gaps) as int64 codes."""
  values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
  finite = np.isfinite(values)
  if np.any(finite & (values != np.round(values))):
    bad = int(np.flatnonzero(finite & (values != np.round(values)))[0])
    raise RawDataError(f"{where}, line {first_line + bad}, column {name!r}: "
                       f"categorical value {values[bad]} is not an integer")
  huge = np.flatnonzero(finite & (np.abs(values) > 2.0**53))
  if len(huge):
    bad = int(huge[0])
    raise RawDataError(f"{where}, line {first_line + bad}, column {name!r}: "
                       f"categorical value {values[bad]} is too large to be an exact "
                       "integer code (beyond 2**53); fix the value or leave it empty")
  out = np.full(values.shape, MISSING, np.int64)
  out[finite] = values[finite].astype(np.int64)
  return out


def check_range(values: np.ndarray, lo: int, hi: int, name: str, where: str,
                lines: np.ndarray | int, what: str) -> None:
  """Refuses values outside [lo, hi], naming the first one's line and column.

  `lines` is the file line of every value, or of the first one.
  """
  bad = np.flatnonzero((values < lo) | (values > hi))
  if len(bad):
    i = int(bad[0])
    line = int(lines[i]) if isinstance(lines, np.ndarray) else lines + i
    raise RawDataError(f"{where}, line {line}, column {name!r}: {int(values[i])} is "
                       f"outside {lo}..{hi} ({what}); fix or remove the row "
                       f"({len(bad)} such value(s) in this block)")


def check_binary(values: np.ndarray, name: str, where: str, first_line: int) -> None:
  bad = np.flatnonzero((values != 0) & (values != 1))
  if len(bad):
    raise RawDataError(
        f"{where}, line {first_line + int(bad[0])}, column {name!r}: label "
        f"{values[bad[0]]} is outside {{0, 1}}")


class StringCoder:
  """Maps strings to stable int64 codes (order of first appearance)."""

  def __init__(self):
    self.codes: dict[str, int] = {}
    self.strings: list[str] = []

  def code(self, s: str) -> int:
    c = self.codes.get(s)
    if c is None:
      c = self.codes[s] = len(self.strings)
      self.strings.append(s)
    return c

  def encode(self, array: pa.Array | pa.ChunkedArray,
             transform: Callable[[str], str] | None = None) -> np.ndarray:
    """Codes of a string column; missing values become the string ''."""
    if isinstance(array, pa.ChunkedArray):
      array = array.combine_chunks()
    array = array.fill_null("")
    enc = array.dictionary_encode()
    dictionary = enc.dictionary.to_pylist()
    if transform is not None:
      dictionary = [transform(s) for s in dictionary]
    lookup = np.array([self.code(s) for s in dictionary], np.int64)
    indices = enc.indices.to_numpy(zero_copy_only=False)
    return lookup[indices] if len(lookup) else np.zeros(len(indices), np.int64)


def lookup_rows(keys_sorted: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Positions of `query` in the sorted unique `keys_sorted`, and which were found."""
  if len(keys_sorted) == 0:
    return np.zeros(len(query), np.int64), np.zeros(len(query), bool)
  pos = np.minimum(np.searchsorted(keys_sorted, query), len(keys_sorted) - 1)
  return pos, keys_sorted[pos] == query


# ----------------------------------------------------------------------------
# The prepared dataset description.


@dataclasses.dataclass(frozen=True)
class FeatureDef:
  """One prepared feature. `kind` is 'int' (raw ints, vocabulary of values) or
  'str' (strings coded by a StringCoder); dense features have kind 'dense'."""
  name: str
  kind: str


@dataclasses.dataclass
class Chunk:
  """Raw rows of one block after filtering, in file order."""
  domain: np.ndarray  # int32 [n]
  labels: np.ndarray  # uint8 [n, T]
  sparse: np.ndarray  # int64 [n, S] raw codes
  dense: np.ndarray  # float64 [n, Q] (already transformed, not yet scaled)
  time: np.ndarray  # int64 [n]
  user: np.ndarray  # int64 [n]
  item: np.ndarray  # int64 [n]
  # Hash of each row's raw line (`read_blocks(line_hashes=True)`) and the file
  # it came from: exact duplicate rows are counted from these.
  row_hash: np.ndarray | None = None  # int64 [n]
  origin: str = ""


@dataclasses.dataclass
class PrepareSpec:
  dataset: str  # "kuairand" | "movielens"
  sparse: tuple[FeatureDef, ...]
  dense_names: tuple[str, ...]
  domain_names: tuple[str, ...]
  task_names: tuple[str, ...]
  split: str  # "temporal" | "random"
  split_ratios: tuple[float, ...]
  split_seed: int
  coders: Mapping[str, StringCoder]  # string features' coders, by feature name
  source: Mapping[str, Any]  # provenance recorded in the schema
  vocabulary: str = DEFAULT_VOCABULARY  # one of VOCABULARIES
  # Findings about the input that the builder's chunks add while they are read
  # (e.g. ids missing from a feature file); recorded in the schema's
  # `source.checks` and printed with the summary.
  checks: dict = dataclasses.field(default_factory=dict)


class _Spill:
  """Append-only flat files of fixed-width columns."""

  def __init__(self, directory: str, layout: Mapping[str, tuple[np.dtype, int]]):
    self.dir = directory
    self.layout = {k: (np.dtype(d), w) for k, (d, w) in layout.items()}
    self.files = {k: open(os.path.join(directory, k + ".bin"), "wb") for k in layout}
    self.rows = 0

  def append(self, columns: Mapping[str, np.ndarray]) -> None:
    n = None
    for k, (dtype, width) in self.layout.items():
      a = np.ascontiguousarray(columns[k], dtype)
      rows = a.shape[0]
      assert a.size == rows * width, (k, a.shape, width)
      n = rows if n is None else n
      assert rows == n
      self.files[k].write(a.tobytes())
    self.rows += n or 0

  def close(self) -> dict[str, "FlatColumn"]:
    for f in self.files.values():
      f.close()
    return {k: FlatColumn(os.path.join(self.dir, k + ".bin"), dtype, width, self.rows,
                          two_d=k in ("labels", "sparse", "dense"))
            for k, (dtype, width) in self.layout.items()}


class FlatColumn:
  """A column in a flat binary file, read by explicit reads (not memory-mapped,
  so the pages read do not count against the process's resident memory)."""

  def __init__(self, path: str, dtype, width: int, rows: int, offset: int = 0,
               two_d: bool = True):
    self.path, self.dtype, self.width, self.rows = path, np.dtype(dtype), width, rows
    self.offset = offset
    self.two_d = two_d
    self.shape = (rows, width) if two_d else (rows,)

  def __len__(self) -> int:
    return self.rows

  def _read(self, start: int, stop: int) -> np.ndarray:
    n = max(stop - start, 0)
    shape = (n, self.width) if self.two_d else (n,)
    if n == 0 or self.width == 0:
      return np.zeros(shape, self.dtype)
    with open(self.path, "rb") as f:
      f.seek(self.offset + start * self.width * self.dtype.itemsize)
      data = np.fromfile(f, self.dtype, count=n * self.width)
    if data.size != n * self.width:
      raise IOError(f"{self.path}: short read")
    return data.reshape(shape)

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, slice):
      start, stop, step = key.indices(self.rows)
      assert step == 1
      return self._read(start, stop)
    idx = np.asarray(key)
    out = np.empty((len(idx),) + self.shape[1:], self.dtype)
    if not len(idx):
      return out
    order = np.argsort(idx, kind="stable")
    sidx = idx[order]
    step = 1 << 20
    start = 0
    while start < len(sidx):
      lo = int(sidx[start])
      hi = min(lo + step, self.rows)
      end = int(np.searchsorted(sidx, hi, side="left"))
      block = self._read(lo, hi)
      out[order[start:end]] = block[sidx[start:end] - lo]
      start = end
    return out


def npy_column(path: str) -> FlatColumn:
  """A `.npy` file as a FlatColumn (2-D arrays keep their width)."""
  with open(path, "rb") as f:
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(f)
    offset = f.tell()
  assert not fortran
  width = shape[1] if len(shape) == 2 else 1
  return FlatColumn(path, dtype, width, shape[0], offset, two_d=len(shape) == 2)


class NpyWriter:
  """Writes a `.npy` file of known shape by appending rows (no memory map),
  keeping its size and CRC-32 (`record()`)."""

  def __init__(self, path: str, dtype, shape: tuple[int, ...]):
    self.f = open(path, "wb")
    self.dtype, self.shape, self.rows = np.dtype(dtype), tuple(shape), 0
    self.crc, self.bytes = 0, 0
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                 "fortran_order": False, "shape": self.shape})
    self._write(header.getvalue())

  def _write(self, data: bytes) -> None:
    self.f.write(data)
    self.crc = zlib.crc32(data, self.crc)
    self.bytes += len(data)

  def append(self, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a, self.dtype)
    self._write(a.tobytes())
    self.rows += a.shape[0]

  def record(self) -> dict[str, Any]:
    return {"bytes": self.bytes, "crc32": f"{self.crc:08x}"}

  def close(self) -> None:
    self.f.close()
    assert self.rows == self.shape[0], (self.rows, self.shape)


def _chunks(n: int, size: int) -> Iterator[slice]:
  for start in range(0, n, size):
    yield slice(start, min(start + size, n))


def split_sizes(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
  if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
    raise ValueError(f"split_ratios must be three non-negative numbers, got {ratios}")
  total = float(sum(ratios))
  n_train = int(n * ratios[0] / total)
  n_val = int(n * ratios[1] / total)
  return n_train, n_val, n - n_train - n_val


def _kth_smallest(values: np.ndarray, k: int, chunk: int) -> int:
  """Exact k-th smallest (0-based) of an int64 array read in chunks."""
  lo = min(int(values[s].min()) for s in _chunks(len(values), chunk))
  hi = max(int(values[s].max()) for s in _chunks(len(values), chunk))
  below = 0  # values < lo
  while True:
    if hi - lo < 1024:
      edges = np.arange(lo, hi + 2, dtype=np.int64)
    else:  # integer arithmetic: float edges lose precision on large times
      width = -(-(hi - lo + 1) // 1024)
      edges = np.array([min(lo + i * width, hi + 1) for i in range(1025)], np.int64)
      edges = np.unique(edges)
    counts = np.zeros(len(edges) - 1, np.int64)
    for s in _chunks(len(values), chunk):
      v = np.asarray(values[s])
      v = v[(v >= lo) & (v <= hi)]
      counts += np.bincount(np.searchsorted(edges, v, side="right") - 1,
                            minlength=len(counts))[:len(counts)]
    cum = np.cumsum(counts)
    b = int(np.searchsorted(cum, k - below, side="right"))
    below += int(cum[b - 1]) if b > 0 else 0
    lo, hi = int(edges[b]), int(edges[b + 1]) - 1
    if lo == hi:
      return lo


def temporal_assignment(time: np.ndarray, user: np.ndarray, item: np.ndarray,
                        sizes: Sequence[int], chunk: int) -> np.ndarray:
  """Split index of every row when rows are ordered by (time, user, item, row).

  No global sort: each cut's time is found by exact selection, and only the
  rows tied at that time are sorted.
  """
  n = len(time)
  part = np.zeros(n, np.uint8)
  cut = 0
  for size in sizes[:-1]:
    cut += size
    if cut >= n:
      break
    t = _kth_smallest(time, cut, chunk)
    below = 0
    tied = []
    for s in _chunks(n, chunk):
      v = np.asarray(time[s])
      part[s] += (v > t)
      below += int(np.count_nonzero(v < t))
      tied.append(np.flatnonzero(v == t) + s.start)
    tied = np.concatenate(tied)
    order = np.lexsort((tied, np.asarray(item[tied]), np.asarray(user[tied])))
    after = tied[order[cut - below:]]
    part[after] += 1
  return part


def count_duplicate_rows(row_hash: "FlatColumn", origin: "FlatColumn", scratch: str,
                         num_origins: int, chunk: int) -> np.ndarray:
  """Rows that repeat an earlier row's line exactly, counted per origin file.

  Rows are bucketed by the top bits of their hash into at most 256 spill files
  (one pass), then each bucket is sorted on its own, so memory is bounded by a
  bucket, not by the number of rows. Rows with origin < 0 carry no hash.
  """
  n = len(row_hash)
  counts = np.zeros(num_origins, np.int64)
  if n == 0 or num_origins == 0:
    return counts
  bits = min(8, max(0, int(np.ceil(np.log2(max(n / chunk, 1.0))))))
  paths = [os.path.join(scratch, f"dup{b}.bin") for b in range(1 << bits)]
  files = [open(q, "wb") for q in paths]
  try:
    for s in _chunks(n, chunk):
      h = np.asarray(row_hash[s])
      keep = np.flatnonzero(np.asarray(origin[s]) >= 0)
      pairs = np.stack([h[keep], keep + s.start], axis=1)
      bucket = (h[keep].view(np.uint64) >> np.uint64(64 - bits)).astype(np.int64) if bits \
          else np.zeros(len(keep), np.int64)
      for b in np.unique(bucket):
        files[b].write(np.ascontiguousarray(pairs[bucket == b]).tobytes())
  finally:
    for f in files:
      f.close()
  for q in paths:
    pairs = np.fromfile(q, np.int64).reshape(-1, 2)
    os.remove(q)
    if len(pairs) < 2:
      continue
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    h, rows = pairs[order, 0], pairs[order, 1]
    later = rows[1:][h[1:] == h[:-1]]
    if len(later):
      counts += np.bincount(np.asarray(origin[later]), minlength=num_origins)
  return counts


def random_assignment(n: int, sizes: Sequence[int], seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  perm = np.arange(n, dtype=np.uint32 if n < 2**32 else np.int64)
  rng.shuffle(perm)
  part = np.empty(n, np.uint8)
  start = 0
  for i, size in enumerate(sizes):
    part[perm[start:start + size]] = i
    start += size
  return part


def prepare(chunks: Iterable[Chunk], spec: PrepareSpec, out_dir: str, *,
            scratch_dir: str | None = None, chunk_rows: int = 1 << 20) -> dict[str, Any]:
  """Runs ingest, split, vocabularies, statistics and encoding (see module doc).

  Writes `out_dir/columnar/<split>/{sparse,dense,domain,labels}.npy`,
  `out_dir/vocab/<feature>.npy` and `out_dir/m3oe_schema.json`, and returns the
  metadata to record with the dataset (`schema` is the FeatureSchema dict).
  """
  chunk_rows = config_int(chunk_rows, "chunk_rows", 1, None,
                          "rows handled at once while preparing")
  S, Q, T = len(spec.sparse), len(spec.dense_names), len(spec.task_names)
  scratch_parent = scratch_dir or out_dir
  os.makedirs(scratch_parent, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix="m3oe-raw-", dir=scratch_parent)
  try:
    spill = _Spill(scratch, {
        "domain": (np.int32, 1), "labels": (np.uint8, T), "sparse": (np.int64, S),
        "dense": (np.float64, Q), "time": (np.int64, 1), "user": (np.int64, 1),
        "item": (np.int64, 1), "row_hash": (np.int64, 1), "origin": (np.int32, 1)})
    origins: dict[str, int] = {}
    for c in chunks:
      cols = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
      rows_c = len(c.domain)
      if c.row_hash is None:
        cols["row_hash"] = np.zeros(rows_c, np.int64)
        cols["origin"] = np.full(rows_c, -1, np.int32)
      else:
        cols["origin"] = np.full(rows_c, origins.setdefault(c.origin, len(origins)),
                                 np.int32)
      spill.append(cols)
    raw = spill.close()
    n = spill.rows
    checks = dict(spec.checks)
    if origins:
      dups = count_duplicate_rows(raw["row_hash"], raw["origin"], scratch, len(origins),
                                  chunk_rows)
      checks["duplicate_rows"] = {
          "total": int(dups.sum()),
          "per_file": {o: int(dups[i]) for o, i in origins.items()},
          "note": "rows (of the kept domains) whose whole line equals an earlier "
                  "row's, counted by 64-bit line hashes; they are kept as rows"}
      if dups.sum():
        log.warning("%s: %d exact duplicate rows kept (per file: %s)", spec.dataset,
                    int(dups.sum()), checks["duplicate_rows"]["per_file"])
    if n == 0:
      raise RawDataError(
          f"{spec.source.get('path', '?')}: no rows left after selecting domains "
          f"{list(spec.domain_names)}")
    empty_domains = [d for i, d in enumerate(spec.domain_names)
                     if not _any_equal(raw["domain"], i, chunk_rows)]
    if empty_domains:
      raise RawDataError(
          f"{spec.source.get('path', '?')}: configured domain(s) {empty_domains} "
          "have no rows in the raw data")
    sizes = split_sizes(n, spec.split_ratios)
    empty = [s for s, k in zip(SPLITS, sizes) if k == 0]
    if empty:
      raise RawDataError(
          f"split {empty} would be empty: {n} rows with ratios "
          f"{list(spec.split_ratios)} give sizes {dict(zip(SPLITS, sizes))}")
    if spec.split == "temporal":
      part = temporal_assignment(raw["time"], raw["user"], raw["item"], sizes, chunk_rows)
    elif spec.split == "random":
      part = random_assignment(n, sizes, spec.split_seed)
    elif spec.split == "file_order":  # the reference code's slicing of its file
      part = np.repeat(np.arange(3, dtype=np.uint8), sizes)
    else:
      raise ValueError(f"split must be one of {SPLIT_KINDS}, got {spec.split!r}")

    if spec.vocabulary not in VOCABULARIES:
      raise ValueError(f"config.data.vocabulary must be one of {VOCABULARIES}, "
                       f"got {spec.vocabulary!r}")
    all_rows_vocab = spec.vocabulary == "all_rows"
    # Dense statistics from the training rows only; vocabularies from the
    # training rows ('train') or from every split's rows ('all_rows').
    uniques: list[list[np.ndarray]] = [[] for _ in range(S)]
    dmin = np.full(Q, np.inf)
    dmax = np.full(Q, -np.inf)
    D = len(spec.domain_names)
    rows = np.zeros((3, D), np.int64)
    positives = np.zeros((3, D, T), np.int64)
    for s in _chunks(n, chunk_rows):
      p = part[s]
      dom = np.asarray(raw["domain"][s])
      lab = np.asarray(raw["labels"][s]).reshape(-1, T)
      for k in range(3):
        m = p == k
        rows[k] += np.bincount(dom[m], minlength=D)
        for t in range(T):
          positives[k, :, t] += np.bincount(dom[m], weights=lab[m, t], minlength=D
                                            ).astype(np.int64)
      train = p == 0
      if not train.any() and not all_rows_vocab:
        continue
      sp = np.asarray(raw["sparse"][s]).reshape(-1, S)
      if not all_rows_vocab:
        sp = sp[train]
      for j in range(S):
        uniques[j].append(np.unique(sp[:, j]))
        if len(uniques[j]) > 16:
          uniques[j] = [np.unique(np.concatenate(uniques[j]))]
      if Q and train.any():
        de = np.asarray(raw["dense"][s]).reshape(-1, Q)[train]
        dmin = np.minimum(dmin, de.min(axis=0))
        dmax = np.maximum(dmax, de.max(axis=0))
    untrained = [d for i, d in enumerate(spec.domain_names) if rows[0, i] == 0]
    if untrained:
      held = {d: int(rows[1:, spec.domain_names.index(d)].sum()) for d in untrained}
      raise RawDataError(
          f"{spec.source.get('path', '?')}: domain(s) {untrained} have no training rows "
          f"(their rows, {held}, all fall in validation/test under the {spec.split} "
          f"split with ratios {list(spec.split_ratios)}), so the model cannot learn "
          "them. Drop these domains from the config, or change config.data.split or "
          "config.data.split_ratios.")
    vocabs = [np.unique(np.concatenate(u)) if u else np.zeros(0, np.int64)
              for u in uniques]
    span = np.where(dmax > dmin, dmax - dmin, 1.0)

    # Encode every split.
    counts = [int(k) for k in sizes]
    col_dir = os.path.join(out_dir, COLUMNAR_DIR)
    outs = {}
    for k, split in enumerate(SPLITS):
      d = os.path.join(col_dir, split)
      os.makedirs(d, exist_ok=True)
      outs[split] = {
          "sparse": NpyWriter(os.path.join(d, "sparse.npy"), np.int32, (counts[k], S)),
          "dense": NpyWriter(os.path.join(d, "dense.npy"), np.float32, (counts[k], Q)),
          "domain": NpyWriter(os.path.join(d, "domain.npy"), np.int32, (counts[k],)),
          "labels": NpyWriter(os.path.join(d, "labels.npy"), np.float32, (counts[k], T)),
      }
    filled = [0, 0, 0]
    oov = np.zeros((3, S), np.int64)
    for s in _chunks(n, chunk_rows):
      p = part[s]
      sp = np.asarray(raw["sparse"][s]).reshape(-1, S)
      ids = np.empty(sp.shape, np.int32)
      for j in range(S):
        pos, found = lookup_rows(vocabs[j], sp[:, j])
        ids[:, j] = np.where(found, pos + 1, OOV_ID)
      de = ((np.asarray(raw["dense"][s]).reshape(-1, Q) - dmin) / span
            ).astype(np.float32) if Q else np.zeros((len(p), 0), np.float32)
      dom = np.asarray(raw["domain"][s])
      lab = np.asarray(raw["labels"][s]).reshape(-1, T).astype(np.float32)
      for k, split in enumerate(SPLITS):
        m = p == k
        c = int(np.count_nonzero(m))
        if not c:
          continue
        o = outs[split]
        o["sparse"].append(ids[m])
        o["dense"].append(de[m])
        o["domain"].append(dom[m])
        o["labels"].append(lab[m])
        oov[k] += np.count_nonzero(ids[m] == OOV_ID, axis=0)
        filled[k] += c
    files = {}
    for split in SPLITS:
      for key, w in outs[split].items():
        w.close()
        files[f"{COLUMNAR_DIR}/{split}/{key}.npy"] = w.record()
    del outs
    assert filled == counts, (filled, counts)

    # Vocabularies, for mapping new raw values later.
    vdir = os.path.join(out_dir, VOCAB_DIR)
    os.makedirs(vdir, exist_ok=True)
    for f, v in zip(spec.sparse, vocabs):
      if f.kind == "str":
        strings = spec.coders[f.name].strings
        np.save(os.path.join(vdir, f.name + ".npy"), np.array([strings[i] for i in v]))
      else:
        np.save(os.path.join(vdir, f.name + ".npy"), v)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)

  stats = {}
  for k, split in enumerate(SPLITS):
    stats[split] = {}
    for d, dname in enumerate(spec.domain_names):
      r = int(rows[k, d])
      stats[split][dname] = {
          "rows": r,
          "positives": {t: int(positives[k, d, i]) for i, t in enumerate(spec.task_names)},
          "positive_rate": {t: (float(positives[k, d, i]) / r if r else 0.0)
                            for i, t in enumerate(spec.task_names)},
      }
  source = {
      **spec.source,
      "dataset": spec.dataset,
      "split": spec.split,
      "split_ratios": [float(r) for r in spec.split_ratios],
      "split_seed": int(spec.split_seed) if spec.split == "random" else None,
      "vocabulary": spec.vocabulary,
      "num_rows": {s: c for s, c in zip(SPLITS, counts)},
      "counts": stats,
      "oov_rows": {s: {f.name: int(oov[k, j]) for j, f in enumerate(spec.sparse)}
                   for k, s in enumerate(SPLITS)},
      "dense_min": {q: float(dmin[i]) for i, q in enumerate(spec.dense_names)},
      "dense_max": {q: float(dmax[i]) for i, q in enumerate(spec.dense_names)},
      "oov_id": OOV_ID,
      "checks": checks,
      # Size and CRC-32 of each columnar file, compared by `integrity.verify`.
      "prepared_files": files,
  }
  schema = FeatureSchema(
      sparse_names=tuple(f.name for f in spec.sparse),
      vocab_sizes=tuple(len(v) + 1 for v in vocabs),
      dense_names=spec.dense_names,
      domain_names=spec.domain_names,
      task_names=spec.task_names,
      source=source)
  with open(os.path.join(out_dir, SCHEMA_FILE), "w") as f:
    f.write(schema.to_json())
  print(format_counts(schema))
  return {"schema": json.loads(schema.to_json())}


def _any_equal(values: np.ndarray, x: int, chunk: int) -> bool:
  return any(np.any(np.asarray(values[s]) == x) for s in _chunks(len(values), chunk))


def format_counts(schema: FeatureSchema) -> str:
  """Per-(split, domain, task) row counts and positive rates as a table."""
  counts = schema.source["counts"]
  tasks = schema.task_names
  head = f"{'split':<11}{'domain':<16}{'rows':>12}" + "".join(
      f"{t + ' rate':>18}" for t in tasks)
  lines = [f"{schema.source.get('dataset', '')} ({schema.source.get('split')} split): "
           "rows and positive rates per (domain, task)", head]
  for split in SPLITS:
    for d in schema.domain_names:
      c = counts[split][d]
      lines.append(f"{split:<11}{d:<16}{c['rows']:>12,}" + "".join(
          f"{c['positive_rate'][t]:>18.4f}" for t in tasks))
  lines.extend(format_checks(schema.source.get("checks") or {}))
  return "\n".join(lines)


def format_checks(checks: Mapping[str, Any]) -> list[str]:
  """Lines saying what the input checks found (duplicates, ids without features)."""
  lines = []
  dup = checks.get("duplicate_rows")
  if dup is not None:
    per = ", ".join(f"{os.path.basename(f)}: {k:,}" for f, k in dup["per_file"].items())
    lines.append(f"exact duplicate rows kept: {dup['total']:,} ({per})")
  for f, m in (checks.get("missing_features") or {}).items():
    example = f", e.g. {m['example_ids']}" if m["ids"] else ""
    lines.append(
        f"rows whose {m['id_column']} is absent from {os.path.basename(f)} (given "
        f"missing features): {m['rows']:,} of {m['rows_checked']:,} ({m['ids']:,} "
        f"distinct ids{example})")
  return lines


# ----------------------------------------------------------------------------
# TFDS glue shared by the builders.


def block_features(num_sparse: int, num_dense: int, num_tasks: int):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  enc = tfds.features.Encoding.BYTES
  feats = {
      "row_offset": tfds.features.Scalar(dtype=np.int64),
      "sparse": tfds.features.Tensor(shape=(None, num_sparse), dtype=np.int32, encoding=enc),
      "domain": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding=enc),
      "labels": tfds.features.Tensor(shape=(None, num_tasks), dtype=np.float32,
                                     encoding=enc),
  }
  if num_dense:  # TFDS cannot decode a zero-width tensor
    feats["dense"] = tfds.features.Tensor(shape=(None, num_dense), dtype=np.float32,
                                          encoding=enc)
  return tfds.features.FeaturesDict(feats)


def generate_blocks(out_dir: str, split: str, start: int = 0, stop: int | None = None,
                    block_rows: int = BLOCK_ROWS
                    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """Blocks of rows [start, stop) of a split's columnar files, as TFDS examples."""
  split_dir = os.path.join(out_dir, COLUMNAR_DIR, split)
  cols = {k: npy_column(os.path.join(split_dir, k + ".npy"))
          for k in ("sparse", "dense", "domain", "labels")}
  n = len(cols["domain"]) if stop is None else stop
  for first in range(start, n, block_rows):
    s = slice(first, min(first + block_rows, n))
    ex = {"row_offset": first, "sparse": cols["sparse"][s], "domain": cols["domain"][s],
          "labels": cols["labels"][s]}
    if cols["dense"].shape[1]:
      ex["dense"] = cols["dense"][s]
    yield first, ex


def load_columnar(split_dir: str, mmap: bool) -> dict[str, np.ndarray]:
  return {k: np.load(os.path.join(split_dir, k + ".npy"), mmap_mode="r" if mmap else None)
          for k in ("sparse", "dense", "domain", "labels")}


def settings_hash(settings: Mapping[str, Any]) -> str:
  # The default vocabulary is left out, so settings from before the
  # `vocabulary` option keep their hash (and their prepared folder).
  if settings.get("vocabulary", DEFAULT_VOCABULARY) == DEFAULT_VOCABULARY:
    settings = {k: v for k, v in settings.items() if k != "vocabulary"}
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha1(text.encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------
# One preparation of a dataset folder at a time, and nothing left by a dead one.

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
    self._fd: int | None = None

  def _read_holder(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.loads(f.read() or "null")
    except (OSError, ValueError):
      return None

  def acquire(self) -> dict | None:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    start = time.monotonic()
    reported = None
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        holder = self._read_holder()
        if holder and holder != reported:
          log.warning("%s is being prepared by pid %s on %s since %s (lock %s); waiting "
                      "for it to finish, then using its result", self.folder,
                      holder.get("pid"), holder.get("host"), holder.get("since"),
                      self.path)
          reported = holder
        if self.timeout_s is not None and time.monotonic() - start > self.timeout_s:
          raise PreparationLockError(
              f"{self.path}: another preparation of {self.folder} (pid "
              f"{(holder or {}).get('pid')} on {(holder or {}).get('host')}) still holds "
              f"the lock after {self.timeout_s:.0f} s; let it finish, or stop it and run "
              "again") from None
        time.sleep(LOCK_POLL_S)
        continue
      except OSError as e:  # a file system without flock
        log.warning("%s: cannot lock (%s); nothing stops a concurrent preparation of "
                    "%s", self.path, e, self.folder)
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if not same:  # the holder we waited for deleted the file: lock the new one
        os.close(fd)
        continue
      left = os.read(fd, 1 << 16).decode("utf8", errors="replace")
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, json.dumps({
          "pid": os.getpid(), "host": socket.gethostname(),
          "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "time": time.time(),
          "folder": self.folder}).encode())
      os.fsync(fd)
      self._fd = fd
      if not left.strip():
        return None
      try:
        return json.loads(left)
      except ValueError:
        return {"record": left[:200]}

  def release(self) -> None:
    if self._fd is None:
      return
    with contextlib.suppress(FileNotFoundError):
      os.unlink(self.path)  # before closing, so no one locks a deleted file
    os.close(self._fd)
    self._fd = None

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


# ----------------------------------------------------------------------------
# The TFDS builder both datasets share.

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """TFDS's DatasetInfo without the look-up of precomputed info in TFDS's bucket,
  which these datasets are not in; the look-up left an empty `$TMPDIR/tmp*tfds`
  folder at every construction of an unprepared builder."""

  def initialize_from_bucket(self) -> None:
    pass

  def read_from_directory(self, dataset_info_dir) -> None:
    """TFDS's, with a damaged `dataset_info.json` named in one line."""
    folder = os.fspath(dataset_info_dir)
    path = os.path.join(folder, integrity.DATASET_INFO)
    integrity.read_json(path, folder)
    try:
      super().read_from_directory(dataset_info_dir)
    except Exception as e:  # pylint: disable=broad-except
      raise integrity.damaged(path, f"unreadable ({integrity.describe_error(e)})",
                              folder) from None


@dataclasses.dataclass(eq=False)
class RawBuilderConfig(tfds.core.BuilderConfig):
  """A builder config whose `settings` (domains, tasks, features, split) are
  part of the prepared data's identity."""
  settings: dict = dataclasses.field(default_factory=dict)


class RawTableBuilder(tfds.core.ShardBasedBuilder, skip_registration=True):
  """Prepares a raw table dataset into array_record blocks plus columnar files.

  Each TFDS example is a block of up to `BLOCK_ROWS` consecutive rows of a
  split (`row_offset` is its first row), so TFDS readers decode whole blocks.
  A `ShardBasedBuilder` (the shard-by-shard sibling of GeneratorBasedBuilder):
  it writes shards of `SHARD_ROWS` rows straight to array_record, whereas
  GeneratorBasedBuilder's shuffler holds up to 1 GB in memory and then spills
  through TensorFlow, which this project does not install.
  Subclasses define `archive_spec()` and `prepare_into(source, out_dir)`.
  """

  SHARD_ROWS = 32 * BLOCK_ROWS

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  HOMEPAGE = ""
  CITATION = ""

  def __init__(self, *, source_options: SourceOptions | None = None,
               scratch_dir: str | None = None, chunk_rows: int = 1 << 20, **kwargs):
    self._source_options = source_options or SourceOptions()
    self._scratch_dir = scratch_dir
    self._chunk_rows = config_int(chunk_rows, "chunk_rows", 1, None,
                                  "rows handled at once while preparing")
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
    # A user's scratch_dir gets one folder per prepared folder, so a rerun
    # finds (and deletes) what a killed preparation of the same data spilled.
    self._own_scratch = None
    if scratch_dir:
      folder = os.path.abspath(os.fspath(self.data_path))
      key = hashlib.sha1(folder.encode()).hexdigest()[:10]
      self._own_scratch = self._scratch_dir = os.path.join(
          os.path.expanduser(scratch_dir),
          f"m3oe-prepare.{self.name}.{self.builder_config.name}.{self.version}.{key}")

  def download_and_prepare(self, *args, **kwargs):
    """TFDS's `download_and_prepare`, by one process at a time per prepared
    folder (`PreparationLock`; the others wait and use its result), after
    deleting what an interrupted preparation left (`remove_leftovers`)."""
    folder = os.fspath(self.data_path)
    if os.path.exists(os.path.join(folder, "dataset_info.json")):
      return super().download_and_prepare(*args, **kwargs)
    with PreparationLock(folder) as dead:
      if os.path.exists(os.path.join(folder, "dataset_info.json")):
        self.info.read_from_directory(folder)  # prepared by the one we waited for
        return None
      removed = remove_leftovers(folder, self._own_scratch)
      if removed or dead:
        who = (f" (pid {dead.get('pid')} on {dead.get('host')}, started "
               f"{dead.get('since')})" if dead else "")
        log.warning("%s: a preparation%s was interrupted; deleted what it left: %s",
                    folder, who, removed or "nothing")
      try:
        return super().download_and_prepare(*args, **kwargs)
      finally:
        if self._own_scratch:
          shutil.rmtree(self._own_scratch, ignore_errors=True)

  @property
  def settings(self) -> dict:
    return self.builder_config.settings

  def _info(self):
    s = self.settings
    return _LocalDatasetInfo(
        builder=self,
        description=self.__doc__,
        features=block_features(len(s["sparse_features"]), len(s["dense_features"]),
                                len(s["tasks"])),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def archive_spec(self) -> ArchiveSpec:
    raise NotImplementedError

  def prepare_into(self, source: RawSource, out_dir: str) -> dict[str, Any]:
    raise NotImplementedError

  def _shard_iterators_per_split(self, dl_manager):
    options = dataclasses.replace(self._source_options)
    if not options.manual_dir:
      options.manual_dir = os.fspath(
          getattr(dl_manager, "_manual_dir", None)
          or os.path.join(os.fspath(self.data_dir_root), "downloads", "manual"))
    def download(url: str) -> str:
      check_reachable(url)
      return os.fspath(dl_manager.download(url))

    source = resolve_source(self.archive_spec(), options, download_fn=download)
    out_dir = os.fspath(self.data_dir)  # TFDS's incomplete.* directory while preparing
    meta = self.prepare_into(source, out_dir)
    meta["schema"]["source"].update({
        "builder": self.name, "builder_config": self.builder_config.name,
        "version": str(self.version), "settings": self.settings})
    with open(os.path.join(out_dir, SCHEMA_FILE), "w") as f:
      json.dump(meta["schema"], f, indent=2, sort_keys=True)
    self.info.metadata.update(meta)
    shards = {}
    for split in SPLITS:
      n = meta["schema"]["source"]["num_rows"][split]
      shards[split] = [functools.partial(generate_blocks, out_dir, split, start,
                                         min(start + self.SHARD_ROWS, n))
                       for start in range(0, n, self.SHARD_ROWS)]
    return shards
