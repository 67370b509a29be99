"""From `config.data` to a prepared KuaiRand or MovieLens `Dataset`.

`load(config.data)` prepares the dataset once (TFDS `download_and_prepare`, in
TFDS's `incomplete.*` directory, renamed only when everything succeeded; see
`raw/builder.py`) and then serves every split from the columnar `.npy` files
written next to the array_record files:

  placement='host'    the columns are read into host memory (`ArraySource`);
  placement='stream'  the columns stay memory-mapped: a batch reads only its
                      rows, in row order, so each process reads only its share;
  placement='device'  the columns are put on the default device and batches are
                      gathered there (only the batch's row indices travel);
  placement='auto'    'host' up to `max_host_bytes`, else 'stream'.

Prepared data is found again from the settings alone (the TFDS config name
holds a hash of them), so evaluation later needs no raw files. Before it is
used it is checked (`integrity.py`: files, headers, sizes, and ids, domains and
labels in range, at load or per streamed batch); a damaged file is a
`PreparedDataError` that names it. Preparation
runs in one process at a time per dataset folder; the others wait and use its
result, and a rerun first deletes what a killed preparation left
(`raw.lock.PreparationLock`, `RawTableBuilder.download_and_prepare`).
`config.data.data_dir` "" means TFDS's default data dir (`$TFDS_DATA_DIR`,
else ~/tensorflow_datasets).

To prepare without training: `python -m m3oe_jax.data.prepared
--config=configs/kuairand.py` (`--verify` then also reads every prepared file
in full and compares its CRC-32 with the one recorded at preparation).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np

from m3oe_jax import paths
from m3oe_jax.data import datasets, integrity
from m3oe_jax.data.pipeline import SPLITS, ArraySource, Dataset
from m3oe_jax.data.raw import builder as raw_builder
from m3oe_jax.data.raw import prepare as raw_prepare
from m3oe_jax.data.raw import settings
from m3oe_jax.data.raw.sources import SourceOptions
from m3oe_jax.data.raw.storage import COLUMNAR_DIR, PREPARED_SCHEMA_FILE, load_columnar
from m3oe_jax.data.schema import BATCH_KEYS, FeatureSchema
from m3oe_jax.errors import ConfigError

log = logging.getLogger("m3oe_jax.data")

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata")
PLACEMENTS = ("auto", "host", "stream", "device")


def data_dir_of(data_config) -> str:
  """Where prepared data lives: `config.data.data_dir`, or when that is unset or
  "", TFDS's default (`$TFDS_DATA_DIR`, else ~/tensorflow_datasets), read now."""
  folder = _get(data_config, "data_dir", "") or raw_builder.default_data_dir()
  return folder if paths.is_url(folder) else os.path.abspath(os.path.expanduser(folder))


def _dataset(name):
  """The module of a dataset prepared from raw files (the registry's entry)."""
  module = datasets.module(name)
  if not datasets.prepared_from_raw(module):
    raise ConfigError(f"config.data.name={name!r} is not prepared from raw files")
  return module


def _get(cfg: Mapping[str, Any] | ml_collections.ConfigDict, key: str, default=None):
  try:
    value = cfg[key]
  except (KeyError, AttributeError):
    return default
  return default if value is None else value


def is_bundled(archive: str) -> bool:
  """Whether `archive` is one of the tiny archives shipped in `data/testdata/`."""
  return bool(archive) and os.path.dirname(os.path.abspath(
      os.path.expanduser(archive))) == BUNDLED_DIR


def raw_source_fields(data_config) -> dict[str, str]:
  """`archive`, `archive_checksum` and `extracted_dir` of `data_config`, where
  an explicit `extracted_dir` replaces a bundled tiny archive (what the
  `:tiny_offline` variants name) and its checksum; beside any other archive it
  is refused, since which of the two to read would be a guess."""
  fields = {k: _get(data_config, k, "") for k in ("archive", "archive_checksum",
                                                   "extracted_dir")}
  if fields["archive"] and fields["extracted_dir"]:
    if not is_bundled(fields["archive"]):
      raise ConfigError(
          f"config.data.archive={fields['archive']!r} and config.data.extracted_dir="
          f"{fields['extracted_dir']!r} are both set; set the one not to read to ''")
    fields.update(archive="", archive_checksum="")
  return fields


def settings_from_config(data_config) -> dict[str, Any]:
  """The builder settings named in `data_config` (unset ones keep their default)."""
  module = _dataset(data_config.name)
  fields = raw_source_fields(data_config)
  chosen = {}
  for key in module.DEFAULT_SETTINGS:
    value = fields["archive_checksum"] if key == "checksum" else _get(data_config, key)
    if value is not None:
      chosen[key] = (value.to_dict() if isinstance(value, ml_collections.ConfigDict)
                     else value)
  return chosen


def check_config(data_config) -> None:
  """Refuses, before anything is read or prepared, a placement or a preparation
  setting (the builder's `make_config`) the dataset cannot use."""
  _placement(data_config)
  _max_host_bytes(data_config)
  settings.chunk_rows(_get(data_config, "chunk_rows", settings.DEFAULT_CHUNK_ROWS))
  _dataset(data_config.name).make_config(**settings_from_config(data_config))


def _placement(data_config) -> str:
  """`config.data.placement`, refused unless one of PLACEMENTS."""
  placement = _get(data_config, "placement", "auto")
  if placement not in PLACEMENTS:
    raise ConfigError(f"config.data.placement={placement!r}; expected one of {PLACEMENTS}")
  return placement


def _max_host_bytes(data_config) -> int:
  """`config.data.max_host_bytes`: under 'auto', the largest split held in memory."""
  return settings.config_int(_get(data_config, "max_host_bytes", 8 << 30), "max_host_bytes",
                             0, None, "placement 'auto': larger splits stream from disk")


def make_builder(data_config):
  """The TFDS builder of `data_config`'s dataset and settings (nothing is read yet)."""
  module = _dataset(data_config.name)
  cls = module.BUILDER
  config = module.make_config(**settings_from_config(data_config))
  if any(c.name == config.name for c in cls.BUILDER_CONFIGS):
    config = config.name  # a named config (TFDS refuses an equal custom one)
  data_dir = data_dir_of(data_config)
  fields = raw_source_fields(data_config)
  if fields["extracted_dir"] and is_bundled(_get(data_config, "archive", "")):
    log.warning("config.data.extracted_dir=%s replaces the bundled tiny archive %s "
                "(the :tiny_offline variant's): preparing the files in that folder",
                fields["extracted_dir"], data_config.archive)
  options = SourceOptions(
      archive=fields["archive"],
      checksum=fields["archive_checksum"],
      extracted_dir=fields["extracted_dir"],
      manual_dir=_get(data_config, "manual_dir", ""),
      download=bool(_get(data_config, "download", True)))
  return cls(config=config, data_dir=data_dir, source_options=options,
             scratch_dir=_get(data_config, "scratch_dir", "") or None,
             chunk_rows=_get(data_config, "chunk_rows", settings.DEFAULT_CHUNK_ROWS))


def is_prepared(builder) -> bool:
  path = os.fspath(builder.data_path)
  return (os.path.exists(os.path.join(path, integrity.DATASET_INFO))
          and os.path.exists(os.path.join(path, PREPARED_SCHEMA_FILE)))


def prepare(data_config):
  """Prepares the dataset if needed; returns the builder."""
  builder = make_builder(data_config)
  if not is_prepared(builder):
    folder = os.fspath(builder.data_path)
    # TFDS moves a preparation into its folder only once it is complete.
    missing = [name for name in (integrity.DATASET_INFO, PREPARED_SCHEMA_FILE)
               if os.path.isdir(folder) and not os.path.exists(os.path.join(folder, name))]
    if missing:
      raise integrity.damaged(os.path.join(folder, missing[0]), "missing", folder)
    manual = _get(data_config, "manual_dir", "")
    raw_builder.download_and_prepare(
        builder, os.path.expanduser(manual) if manual else None)
  return builder


def read_schema(builder) -> FeatureSchema:
  folder = os.fspath(builder.data_path)
  return integrity.read_schema(os.path.join(folder, PREPARED_SCHEMA_FILE), folder)


class MemmapSource:
  """Rows of memory-mapped columnar files; a batch is gathered column by column
  in row order (sequential pages), so only the requested rows are read.
  `check(batch, rows)`, if given, sees every batch (rows in file order) first."""

  def __init__(self, split_dir: str,
               check: Callable[[dict[str, np.ndarray], np.ndarray], None] | None = None):
    self.columns = load_columnar(split_dir, mmap=True)
    self._check = check

  def __len__(self) -> int:
    return len(self.columns["domain"])

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices)
    order = np.argsort(indices, kind="stable")
    rows = indices[order]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    batch = {k: np.asarray(self.columns[k][rows]) for k in BATCH_KEYS}
    if self._check is not None:
      self._check(batch, rows)
    return {k: v[inverse] for k, v in batch.items()}


class DeviceSource:
  """Columns kept in accelerator memory; batches are gathered on the device."""

  def __init__(self, columns: Mapping[str, np.ndarray]):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    self.columns = {k: jax.device_put(np.asarray(columns[k])) for k in BATCH_KEYS}
    self._gather = jax.jit(lambda cols, idx: {k: jnp.take(v, idx, axis=0)
                                              for k, v in cols.items()})

  def __len__(self) -> int:
    return int(self.columns["domain"].shape[0])

  def take(self, indices: np.ndarray):
    return self._gather(self.columns, np.asarray(indices, np.int32))


def _split_bytes(split_dir: str) -> int:
  return sum(os.path.getsize(os.path.join(split_dir, k + ".npy")) for k in BATCH_KEYS)


def read_split_from_tfds(builder, split: str, batch: int = 64) -> dict[str, np.ndarray]:
  """A split read back from the TFDS array_record files (whole blocks at a time)."""
  source = builder.as_data_source()[split]
  blocks = []
  for start in range(0, len(source), batch):
    blocks.extend(source.__getitems__(list(range(start, min(start + batch, len(source))))))
  blocks.sort(key=lambda b: int(b["row_offset"]))
  schema = read_schema(builder)
  cols = {k: np.concatenate([np.asarray(b[k]) for b in blocks]) if blocks else None
          for k in ("sparse", "domain", "labels")}
  n = len(cols["domain"]) if blocks else 0
  if blocks and "dense" in blocks[0]:
    cols["dense"] = np.concatenate([np.asarray(b["dense"]) for b in blocks])
  else:
    cols["dense"] = np.zeros((n, schema.num_dense), np.float32)
  if not blocks:
    cols = {"sparse": np.zeros((0, schema.sparse_width), np.int32),
            "dense": np.zeros((0, schema.num_dense), np.float32),
            "domain": np.zeros((0,), np.int32),
            "labels": np.zeros((0, schema.num_tasks), np.float32)}
  return cols


def load(data_config) -> Dataset:
  """The prepared splits (preparing first if needed), checked as
  `integrity` describes: a damaged file is a PreparedDataError naming it."""
  builder = prepare(data_config)
  folder = os.fspath(builder.data_path)
  schema = read_schema(builder)
  src = schema.source
  log.info("%s: prepared data in %s (from %s %s, checksum %s)", data_config.name,
           folder, src.get("kind"), src.get("path"), src.get("checksum"))
  if not src.get("prepared_files"):
    log.info("%s: prepared before file checksums were recorded: shapes, sizes and "
             "value ranges are checked, the files' contents beyond that are not (not "
             "even by --verify)", folder)
  placement = _placement(data_config)
  max_host = _max_host_bytes(data_config)
  base = os.path.join(folder, COLUMNAR_DIR)
  splits = {}
  for split in SPLITS:
    split_dir = os.path.join(base, split)
    where = lambda key, d=split_dir: os.path.join(d, key + ".npy")
    if not os.path.isdir(split_dir):
      log.warning("%s: no columnar files, reading the TFDS array_record files", split_dir)
      cols = read_split_from_tfds(builder, split)
      integrity.check_values(
          cols, schema, lambda key, s=split: os.path.join(folder, f"*-{s}.array_record*"),
          folder)
      splits[split] = DeviceSource(cols) if placement == "device" else ArraySource(cols)
      continue
    rows = src.get("num_rows", {}).get(split)
    if not isinstance(rows, int):
      raise integrity.damaged(os.path.join(folder, PREPARED_SCHEMA_FILE),
                              f"no row count of split {split!r} (source.num_rows)", folder)
    integrity.check_split_files(split_dir, schema, rows, folder)
    mode = placement
    if mode == "auto":
      mode = "host" if _split_bytes(split_dir) <= max_host else "stream"
    if mode == "stream":
      splits[split] = MemmapSource(split_dir, functools.partial(
          _check_batch, schema=schema, where=where, folder=folder))
      continue
    cols = load_columnar(split_dir, mmap=mode == "device")
    integrity.check_values(cols, schema, where, folder)
    splits[split] = ArraySource(cols) if mode == "host" else DeviceSource(cols)
  return Dataset(schema=schema, splits=splits)


def _check_batch(batch, rows, *, schema, where, folder) -> None:
  integrity.check_values(batch, schema, where, folder, rows=rows)


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from m3oe_jax import cli  # pylint: disable=g-import-not-at-top
  cli.start(argv)
  config = cli.config_value(flags.FLAGS["config"])
  builder = prepare(config.data)
  schema = read_schema(builder)
  print(f"prepared: {builder.data_path}")
  print(raw_prepare.format_counts(schema))
  if "verify" in flags.FLAGS and flags.FLAGS.verify:
    print(integrity.verify(os.fspath(builder.data_path), schema, SPLITS, COLUMNAR_DIR))


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from m3oe_jax import cli  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "experiment config (configs/*.py[:VARIANT])")
  flags.DEFINE_bool("verify", False, "also read every prepared file in full: value "
                    "ranges, and CRC-32s against those recorded at preparation")
  cli.run(main)
