"""A dataset of the user's own log files, declared in `config.data.files`.

Impression logs (CSV, TSV, Parquet, gzip-compressed text; local or gs://) with
a scenario column and label columns, joined with side tables by key, prepared
through the same TFDS builder, staging folder, lock and checks as the paper
datasets. The declaration's fields are documented in `configs/files.py`;
`raw/declaration.py` checks them, `raw/tables.py` reads the files,
`raw/side_tables.py` joins and `raw/roles.py` converts each column by its role.

Before any row is spilled, every log file's columns are checked against the
declaration (missing columns, Parquet columns of a type their role cannot
read) and the side tables are read whole and checked; values (a label outside
{0, 1}, an unmapped domain value, text in a number column) are checked as the
rows stream, and the first bad one stops the preparation, which leaves nothing
behind.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa

from m3oe_jax.data.raw import (RawDataError, builder, declaration, hashing, log_features,
                               prepare, roles, settings, tables)
from m3oe_jax.data.raw.declaration import DOMAIN_FEATURE, Declaration

log = logging.getLogger("m3oe_jax.data")

DEFAULT_SETTINGS = {"files": {}}
# What each dense scaling does before (transform) and at (scaling) preparation.
_SCALING = {"minmax": ("", "minmax"), "standard": ("", "standard"), "log": ("log1p", "none")}


def make_config(**overrides) -> builder.RawBuilderConfig:
  """The builder config of a declaration; its name holds the declaration's hash,
  so each declaration prepares into its own folder."""
  s = settings.with_defaults("files", DEFAULT_SETTINGS, overrides)
  s["files"] = declaration.plain(s["files"])
  declaration.parse(s["files"])
  return builder.RawBuilderConfig(name=f"files_{settings.settings_hash(s)}",
                                  description="declared log files", settings=s)


class M3oeFiles(builder.RawTableBuilder):
  """Declared impression logs joined with side tables."""

  name = "m3oe_files"
  BUILDER_CONFIGS = []

  @property
  def declaration(self) -> Declaration:
    return declaration.parse(self.settings["files"])

  def block_shape(self) -> tuple[int, int, int]:
    d = self.declaration
    width = sum(c.max_values for c in d.categorical) + int(d.domain.as_feature)
    return width, len(d.dense), len(d.tasks)

  def find_source(self, dl_manager):
    return None

  def prepare_into(self, source, out_dir: str) -> dict[str, Any]:
    return prepare_files(self.declaration, out_dir, scratch_dir=self._scratch_dir,
                         chunk_rows=self._chunk_rows)


BUILDER = M3oeFiles


def _log_files(d: Declaration) -> list[tuple[str, int | None]]:
  """(path, split it holds, or None) of every log file."""
  out = []
  for glob in d.logs:
    out += [(p, 0 if d.split.mode == "files" else None)
            for p in tables.expand(glob, "config.data.files.logs")]
  for name, glob in d.split.files:
    out += [(p, declaration.SPLIT_NAMES.index(name))
            for p in tables.expand(glob, f"config.data.files.split.{name}")]
  seen = collections.Counter(p for p, _ in out)
  twice = sorted(p for p, k in seen.items() if k > 1)
  if twice:
    raise RawDataError(f"{twice[0]}: matched by several globs of config.data.files; its "
                       "rows would be read twice")
  return out


def _numeric_roles(d: Declaration) -> dict[str, str]:
  """Columns read as numbers, and what they are."""
  out = {c: "a dense feature" for c, _ in d.dense}
  out.update({t.column: f"the label of task {t.name!r}" for t in d.tasks
              if t.rule != "present"})
  return out


def check_headers(d: Declaration, paths: list[str], columns: list[str], fmt: str
                  ) -> dict[str, bool]:
  """Refuses a log file without one of `columns`, or a Parquet column whose type
  its role cannot read; returns whether each file is text."""
  numeric = {c: what for c, what in _numeric_roles(d).items() if c in columns}
  text = {}
  for path in paths:
    head = tables.header(path, fmt)
    missing = [c for c in columns if c not in head.names]
    if missing:
      raise RawDataError(f"{path}, column {missing[0]!r}: missing (the file has columns "
                         f"{list(head.names)[:20]})")
    for column, what in numeric.items():
      t = head.types.get(column)
      if t is not None and not (pa.types.is_integer(t) or pa.types.is_floating(t)
                                or pa.types.is_boolean(t) or pa.types.is_decimal(t)
                                or pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise RawDataError(f"{path}, column {column!r}: type {t} cannot be read as a "
                           f"number ({what})")
    tables.refuse_nested(path, head, columns)
    text[path] = head.text
  return text


def _top_domains(d: Declaration, files, chunk_rows: int) -> list[str]:
  """The `top_n` most frequent values of the domain column (ties by value),
  counted in one pass over that column alone."""
  counts: collections.Counter = collections.Counter()
  for path, _ in files:
    for _, batch in tables.batches(path, d.format, [d.domain.column], chunk_rows):
      vc = roles.as_text(batch.column(d.domain.column)).value_counts()
      for item in vc.to_pylist():
        if item["values"] is not None:
          counts[item["values"]] += item["counts"]
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
  if len(ranked) < d.domain.top_n:
    raise RawDataError(f"config.data.files.domain.top_n={d.domain.top_n}: column "
                       f"{d.domain.column!r} has only {len(ranked)} distinct values")
  return [v for v, _ in ranked[:d.domain.top_n]]


def prepare_files(d: Declaration, out_dir: str, *, scratch_dir: str | None = None,
                  chunk_rows: int = settings.DEFAULT_CHUNK_ROWS) -> dict[str, Any]:
  files = _log_files(d)
  text = check_headers(d, [p for p, _ in files], d.log_columns(), d.format)
  encoders = {c.name: roles.CategoricalEncoder(c.vocabulary.mode, c.vocabulary.buckets,
                                               c.separator, c.max_values)
              for c in d.categorical}
  features = log_features.LogFeatures(d, encoders, chunk_rows)
  if d.domain.values:
    domain_names = list(d.domain.names)
    domain_of = {v: domain_names.index(name) for v, name in d.domain.values}
  else:
    domain_names = _top_domains(d, files, chunk_rows)
    domain_of = {v: i for i, v in enumerate(domain_names)}
  split_of = {v: declaration.SPLIT_NAMES.index(s) for v, s in d.split.values}
  checks: dict[str, Any] = {}
  dropped = {"domain_outside_top_n": 0, "unmatched_side_rows": 0}

  def chunks() -> Iterator[prepare.Chunk]:
    for path, file_split in files:
      for first, batch in tables.batches(path, d.format, d.log_columns(), chunk_rows):
        place = roles.Place(path, first, text[path])
        n = batch.num_rows
        keep = np.ones(n, bool)
        if d.domain.values:
          domain = roles.mapped(batch.column(d.domain.column), d.domain.column, domain_of,
                                place, "config.data.files.domain.values")
        else:
          domain = roles.lookup(batch.column(d.domain.column), domain_of)
          dropped["domain_outside_top_n"] += int(np.count_nonzero(domain < 0))
          keep &= domain >= 0
        read = features.read(batch, place)
        if d.unmatched == "drop" and features.joined:
          dropped["unmatched_side_rows"] += int(n - np.count_nonzero(read.matched))
          keep &= read.matched
        labels = np.stack([roles.label(batch.column(t.column), t.column, t.rule,
                                       t.threshold, place) for t in d.tasks], axis=1)
        sp = read.sparse
        if d.domain.as_feature:
          sp = np.concatenate([sp, domain[:, None].astype(sp.dtype)], axis=1)
        dense = read.dense
        time = np.zeros(n, np.int64)
        if d.split.mode == "temporal":
          time = roles.times(batch.column(d.split.column), d.split.column, place)
        split = None
        if d.split.mode == "column":
          split = roles.mapped(batch.column(d.split.column), d.split.column, split_of,
                               place, "config.data.files.split.values").astype(np.uint8)
        elif d.split.mode == "files":
          split = np.full(n, file_split, np.uint8)
        k = slice(None) if keep.all() else np.flatnonzero(keep)
        yield prepare.Chunk(
            domain=domain[k].astype(np.int32), labels=labels[k], sparse=sp[k],
            dense=dense[k], time=time[k], user=np.zeros(n, np.int64)[k],
            item=np.zeros(n, np.int64)[k], split=None if split is None else split[k])
    checks.update(_findings(d, features.joined, encoders, dropped))

  sparse_defs = [prepare.FeatureDef(
      c.name, "hashed" if c.vocabulary.mode == "hash" else "coded", width=c.max_values,
      min_count=c.vocabulary.min_count, buckets=c.vocabulary.buckets,
      describe=_describe_feature(c)) for c in d.categorical]
  if d.domain.as_feature:
    sparse_defs.append(prepare.FeatureDef(DOMAIN_FEATURE, "int",
                                          describe={"value": "the domain's index"}))
  split_kind = {"temporal": "temporal", "random": "random"}.get(d.split.mode, "given")
  spec = prepare.PrepareSpec(
      dataset="files",
      sparse=tuple(sparse_defs),
      dense_names=tuple(c for c, _ in d.dense),
      domain_names=tuple(domain_names),
      task_names=tuple(t.name for t in d.tasks),
      split=split_kind, split_ratios=d.split.ratios, split_seed=d.split.seed,
      coders={c.name: encoders[c.name].coder for c in d.categorical
              if encoders[c.name].coder is not None},
      source={"kind": "files", "path": ", ".join(d.logs),
              "checksum": "not verified (declared files)",
              "files": {p: _size(p) for p, _ in files},
              "side_table_files": {j.spec.name: j.files for j in features.joined},
              "split_mode": d.split.mode,
              "domain_values": (dict(d.domain.values) if d.domain.values
                                else {"top_n": domain_names}),
              "label_rules": {t.name: {"column": t.column, "rule": t.rule,
                                       **({"threshold": t.threshold}
                                          if t.rule == "above" else {})}
                              for t in d.tasks}},
      checks=checks,
      dense_scaling=tuple(_SCALING[k][1] for _, k in d.dense),
      dense_transforms=tuple(_SCALING[k][0] for _, k in d.dense))
  return prepare.prepare(chunks(), spec, out_dir, scratch_dir=scratch_dir,
                         chunk_rows=chunk_rows)


def _describe_feature(c: declaration.Categorical) -> dict[str, Any]:
  out: dict[str, Any] = {"column": c.name}
  if c.separator:
    out.update(separator=c.separator, max_values=c.max_values,
               pooling="mean of the known values' embeddings")
  if c.vocabulary.mode == "hash":
    out.update(hashing.describe(c.vocabulary.buckets))
  return out


def _size(path: str) -> int | None:
  try:
    if "://" in path:
      from etils import epath  # pylint: disable=g-import-not-at-top
      return int(epath.Path(path).stat().length)
    return os.path.getsize(path)
  except (OSError, AttributeError):
    return None


def _findings(d: Declaration, joined, encoders: Mapping[str, Any],
              dropped: Mapping[str, int]) -> dict[str, Any]:
  """What reading found: side-table rows without a match, rows of domains
  outside top_n, multi-valued values past the last slot; also logged."""
  out: dict[str, Any] = {}
  if joined:
    out["unmatched_side_rows"] = {
        j.spec.name: {"rows": j.unmatched_rows, "of": j.rows_seen, "policy": d.unmatched,
                      "files": j.files} for j in joined}
    if d.unmatched == "drop":
      out["rows_dropped_unmatched"] = dropped["unmatched_side_rows"]
    for j in joined:
      if j.unmatched_rows:
        log.warning("files: %d of %d log rows have no match in side table %r (%s: %s)",
                    j.unmatched_rows, j.rows_seen, j.spec.name, d.unmatched,
                    "kept with no value" if d.unmatched == "keep" else "dropped")
  if d.domain.top_n:
    out["rows_outside_top_n_domains"] = dropped["domain_outside_top_n"]
  truncated = {c.name: encoders[c.name].truncated_rows for c in d.categorical
               if c.separator}
  if truncated:
    out["multi_valued_truncated_rows"] = truncated
  return out
