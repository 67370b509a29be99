"""The TFDS builder the prepared datasets share: the package's only TFDS import.

`RawTableBuilder` prepares a dataset once (TFDS `download_and_prepare`, by one
process at a time per folder, after deleting what an interrupted one left):
it finds the raw source, lets the dataset module's `prepare_into` run
`raw.prepare` into TFDS's `incomplete.*` folder, and writes the same rows again
as TFDS array_record shards of row blocks. The columnar files are what
training reads; the shards make the folder a TFDS dataset that TFDS's own
readers open (`as_data_source()`), and loading falls back to them when the
columnar files are missing.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants as tfds_constants

from m3oe_jax.data import integrity
from m3oe_jax.data.pipeline import SPLITS
from m3oe_jax.data.raw import settings
from m3oe_jax.data.raw.lock import PreparationLock, remove_leftovers
from m3oe_jax.data.raw.sources import (ArchiveSpec, RawSource, SourceOptions,
                                       check_reachable, resolve_source)
from m3oe_jax.data.raw.storage import COLUMNAR_DIR, PREPARED_SCHEMA_FILE, npy_column

log = logging.getLogger("m3oe_jax.data")

BLOCK_ROWS = 8192  # rows per TFDS example


def default_data_dir() -> str:
  """TFDS's default data dir, read now: `$TFDS_DATA_DIR`, else ~/tensorflow_datasets."""
  return tfds_constants.get_default_data_dir()


def download_and_prepare(builder: "RawTableBuilder", manual_dir: str | None) -> None:
  """Prepares `builder`'s folder, looking for the raw archive in `manual_dir`."""
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))


def block_features(num_sparse: int, num_dense: int, num_tasks: int):
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
               scratch_dir: str | None = None,
               chunk_rows: int = settings.DEFAULT_CHUNK_ROWS, **kwargs):
    self._source_options = source_options or SourceOptions()
    self._scratch_dir = scratch_dir
    self._chunk_rows = settings.chunk_rows(chunk_rows)
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

  def block_shape(self) -> tuple[int, int, int]:
    """(sparse columns, dense features, tasks) of a row, from the settings."""
    s = self.settings
    return len(s["sparse_features"]), len(s["dense_features"]), len(s["tasks"])

  def _info(self):
    return _LocalDatasetInfo(
        builder=self,
        description=self.__doc__,
        features=block_features(*self.block_shape()),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def archive_spec(self) -> ArchiveSpec:
    raise NotImplementedError

  def prepare_into(self, source: RawSource, out_dir: str) -> dict[str, Any]:
    raise NotImplementedError

  def find_source(self, dl_manager) -> RawSource | None:
    """The raw archive or folder (verified, downloaded if need be); a dataset
    that reads declared files instead returns None."""
    options = dataclasses.replace(self._source_options)
    if not options.manual_dir:
      options.manual_dir = os.fspath(
          getattr(dl_manager, "_manual_dir", None)
          or os.path.join(os.fspath(self.data_dir_root), "downloads", "manual"))
    def download(url: str) -> str:
      check_reachable(url)
      return os.fspath(dl_manager.download(url))

    return resolve_source(self.archive_spec(), options, download_fn=download)

  def _shard_iterators_per_split(self, dl_manager):
    source = self.find_source(dl_manager)
    out_dir = os.fspath(self.data_dir)  # TFDS's incomplete.* directory while preparing
    meta = self.prepare_into(source, out_dir)
    meta["schema"]["source"].update({
        "builder": self.name, "builder_config": self.builder_config.name,
        "version": str(self.version), "settings": self.settings})
    with open(os.path.join(out_dir, PREPARED_SCHEMA_FILE), "w") as f:
      json.dump(meta["schema"], f, indent=2, sort_keys=True)
    self.info.metadata.update(meta)
    shards = {}
    for split in SPLITS:
      n = meta["schema"]["source"]["num_rows"][split]
      shards[split] = [functools.partial(generate_blocks, out_dir, split, start,
                                         min(start + self.SHARD_ROWS, n))
                       for start in range(0, n, self.SHARD_ROWS)]
    return shards
