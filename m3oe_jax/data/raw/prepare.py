"""`prepare()`: raw rows in, a prepared folder out, never holding the rows in memory.

A dataset module reads its raw files into `Chunk`s (raw columns of a block of
rows: domain, labels, raw sparse codes, raw dense values, sort keys) and
describes them in a `PrepareSpec`; `prepare` runs the stages:

1. *Spill* every chunk to flat files in a scratch folder (`storage.Spill`), and
   count the exact duplicate rows by their line hashes.
2. *Check* that rows are left, and that every configured domain has some.
3. *Split* (`splits.py`): temporal, seeded random, or file order, with exact
   sizes from the configured ratios.
4. *Vocabularies and statistics* (`encode.collect_statistics`): dense statistics
   always from the training rows only; vocabularies from the training rows
   (`vocabulary='train'`, the default) or from the rows of every split
   (`vocabulary='all_rows'`, as the authors' reference code label-encodes: a
   value seen only in validation/test gets an id of its own, whose embedding
   row is never trained). Id 0 is the out-of-vocabulary id of every sparse
   feature (never produced by the prepared splits under 'all_rows'). Every
   domain must have training rows.
5. *Encode* every split into columnar `.npy` files (`encode.encode_splits`) and
   save the vocabularies.
6. *Describe*: the FeatureSchema with its provenance, counts and checks, written
   as `m3oe_schema.json` and printed as a table.

All output goes into `out_dir` (TFDS's `incomplete.*` directory, renamed only on
success), so a failed run leaves nothing that looks complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np

from m3oe_jax.data.pipeline import SPLITS
from m3oe_jax.data.raw import RawDataError, encode, settings, splits
from m3oe_jax.data.raw.storage import PREPARED_SCHEMA_FILE, FlatColumn, Spill, row_slices
from m3oe_jax.data.schema import FeatureSchema

log = logging.getLogger("m3oe_jax.data")


@dataclasses.dataclass(frozen=True)
class FeatureDef:
  """One prepared sparse feature. `kind` is 'int' (raw ints, vocabulary of
  values), 'str' (strings coded by a StringCoder), 'coded' (like 'str', with
  `encode.NO_VALUE` for no value) or 'hashed' (the chunks hold final ids,
  1 + a stable hash modulo `buckets`, 0 for no value). `width` columns: more
  than one for a multi-valued feature. Values seen fewer than `min_count` times
  in the vocabulary's rows get the OOV id."""
  name: str
  kind: str
  width: int = 1
  min_count: int = 1
  buckets: int = 0
  # How serving reproduces the ids (recorded in the schema), e.g. the hash.
  describe: Mapping[str, Any] | None = None


@dataclasses.dataclass
class Chunk:
  """Raw rows of one block after filtering, in file order."""
  domain: np.ndarray  # int32 [n]
  labels: np.ndarray  # uint8 [n, T]
  sparse: np.ndarray  # int64 (or int32) [n, S] raw codes
  dense: np.ndarray  # float64 [n, Q] (already transformed, not yet scaled)
  time: np.ndarray  # int64 [n]
  user: np.ndarray  # int64 [n]
  item: np.ndarray  # int64 [n]
  # Hash of each row's raw line (`read_blocks(line_hashes=True)`) and the file
  # it came from: exact duplicate rows are counted from these.
  row_hash: np.ndarray | None = None  # int64 [n]
  origin: str = ""
  # The split of each row (0 train, 1 validation, 2 test) when the input gives
  # it (split 'given').
  split: np.ndarray | None = None  # uint8 [n]


@dataclasses.dataclass
class PrepareSpec:
  """What a dataset module's chunks hold, and how to prepare them."""
  dataset: str  # e.g. "kuairand-pure", "movielens-1m"
  sparse: tuple[FeatureDef, ...]
  dense_names: tuple[str, ...]
  domain_names: tuple[str, ...]
  task_names: tuple[str, ...]
  split: str  # one of settings.SPLIT_KINDS
  split_ratios: tuple[float, ...]
  split_seed: int
  coders: Mapping[str, encode.StringCoder]  # string features' coders, by feature name
  source: Mapping[str, Any]  # provenance recorded in the schema
  vocabulary: str = settings.DEFAULT_VOCABULARY  # one of VOCABULARIES
  # Findings about the input that the builder's chunks add while they are read
  # (e.g. ids missing from a feature file); recorded in the schema's
  # `source.checks` and printed with the summary.
  checks: dict = dataclasses.field(default_factory=dict)
  # Per dense feature: 'minmax' (the default), 'standard' or 'none', fitted on
  # the training rows; and what was done before (recorded for serving).
  dense_scaling: tuple[str, ...] = ()
  dense_transforms: tuple[str, ...] = ()


def prepare(chunks: Iterable[Chunk], spec: PrepareSpec, out_dir: str, *,
            scratch_dir: str | None = None,
            chunk_rows: int = settings.DEFAULT_CHUNK_ROWS) -> dict[str, Any]:
  """Runs the stages of the module doc on `chunks`.

  Writes `out_dir/columnar/<split>/{sparse,dense,domain,labels}.npy`,
  `out_dir/vocab/<feature>.npy` and `out_dir/m3oe_schema.json`, and returns the
  metadata to record with the dataset (`schema` is the FeatureSchema dict).
  """
  chunk_rows = settings.chunk_rows(chunk_rows)
  scratch_parent = scratch_dir or out_dir
  os.makedirs(scratch_parent, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix="m3oe-raw-", dir=scratch_parent)
  try:
    rows, origins = _spill(chunks, spec, scratch)
    checks = dict(spec.checks)  # after the chunks were read: they add to spec.checks
    if origins:
      checks["duplicate_rows"] = _duplicate_rows(rows, origins, scratch, spec, chunk_rows)
    _check_domains_have_rows(rows, spec, chunk_rows)
    sizes, part = splits.assign_splits(spec.split, spec.split_ratios, spec.split_seed,
                                       rows, chunk_rows)
    if spec.vocabulary not in settings.VOCABULARIES:
      raise ValueError(f"config.data.vocabulary must be one of {settings.VOCABULARIES}, "
                       f"got {spec.vocabulary!r}")
    stats = encode.collect_statistics(rows, part, len(spec.domain_names),
                                      spec.vocabulary == "all_rows", chunk_rows,
                                      spec.sparse)
    _check_domains_have_training_rows(stats, spec)
    files, oov = encode.encode_splits(rows, part, sizes, stats, out_dir, chunk_rows,
                                      spec.sparse, spec.dense_scaling)
    encode.save_vocabularies(out_dir, spec.sparse, spec.coders, stats.vocabularies)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  schema = _describe(spec, sizes, stats, oov, checks, files)
  with open(os.path.join(out_dir, PREPARED_SCHEMA_FILE), "w") as f:
    f.write(schema.to_json())
  print(format_counts(schema))
  return {"schema": json.loads(schema.to_json())}


def _spill(chunks: Iterable[Chunk], spec: PrepareSpec, scratch: str
           ) -> tuple[dict[str, FlatColumn], dict[str, int]]:
  """Stage 1: every chunk's columns appended to flat files in `scratch`; returns
  them, and the number of each file the rows' line hashes came from."""
  S = sum(f.width for f in spec.sparse)
  Q, T = len(spec.dense_names), len(spec.task_names)
  spill = Spill(scratch, {
      "domain": (np.int32, 1), "labels": (np.uint8, T), "sparse": (np.int64, S),
      "dense": (np.float64, Q), "time": (np.int64, 1), "user": (np.int64, 1),
      "item": (np.int64, 1), "row_hash": (np.int64, 1), "origin": (np.int32, 1),
      "split": (np.uint8, 1)}, narrow=("sparse",))
  origins: dict[str, int] = {}
  for c in chunks:
    cols = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    rows_c = len(c.domain)
    if c.split is None:
      cols["split"] = np.zeros(rows_c, np.uint8)
    if c.row_hash is None:
      cols["row_hash"] = np.zeros(rows_c, np.int64)
      cols["origin"] = np.full(rows_c, -1, np.int32)
    else:
      cols["origin"] = np.full(rows_c, origins.setdefault(c.origin, len(origins)),
                               np.int32)
    spill.append(cols)
  return spill.close(), origins


def _duplicate_rows(rows: Mapping[str, FlatColumn], origins: Mapping[str, int],
                    scratch: str, spec: PrepareSpec, chunk_rows: int) -> dict[str, Any]:
  """Stage 1: the exact duplicate rows, per file, as recorded in `source.checks`."""
  dups = count_duplicate_rows(rows["row_hash"], rows["origin"], scratch, len(origins),
                              chunk_rows)
  found = {
      "total": int(dups.sum()),
      "per_file": {o: int(dups[i]) for o, i in origins.items()},
      "note": "rows (of the kept domains) whose whole line equals an earlier "
              "row's, counted by 64-bit line hashes; they are kept as rows"}
  if dups.sum():
    log.warning("%s: %d exact duplicate rows kept (per file: %s)", spec.dataset,
                int(dups.sum()), found["per_file"])
  return found


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
    for s in row_slices(n, chunk):
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


def _check_domains_have_rows(rows: Mapping[str, FlatColumn], spec: PrepareSpec,
                             chunk_rows: int) -> None:
  """Stage 2: refuses no rows at all, and a configured domain without rows."""
  if len(rows["domain"]) == 0:
    raise RawDataError(
        f"{spec.source.get('path', '?')}: no rows left after selecting domains "
        f"{list(spec.domain_names)}")
  empty_domains = [d for i, d in enumerate(spec.domain_names)
                   if not _any_equal(rows["domain"], i, chunk_rows)]
  if empty_domains:
    raise RawDataError(
        f"{spec.source.get('path', '?')}: configured domain(s) {empty_domains} "
        "have no rows in the raw data")


def _any_equal(values: np.ndarray, x: int, chunk: int) -> bool:
  return any(np.any(np.asarray(values[s]) == x) for s in row_slices(len(values), chunk))


def _check_domains_have_training_rows(stats: encode.Statistics, spec: PrepareSpec) -> None:
  """Stage 4: refuses a domain whose rows all fall in validation and test."""
  rows = stats.rows
  untrained = [d for i, d in enumerate(spec.domain_names) if rows[0, i] == 0]
  if untrained:
    held = {d: int(rows[1:, spec.domain_names.index(d)].sum()) for d in untrained}
    raise RawDataError(
        f"{spec.source.get('path', '?')}: domain(s) {untrained} have no training rows "
        f"(their rows, {held}, all fall in validation/test under the {spec.split} "
        f"split with ratios {list(spec.split_ratios)}), so the model cannot learn "
        "them. Drop these domains from the config, or change config.data.split or "
        "config.data.split_ratios.")


def _describe(spec: PrepareSpec, sizes, stats: encode.Statistics, oov: np.ndarray,
              checks: Mapping[str, Any], files: Mapping[str, Any]) -> FeatureSchema:
  """Stage 6: the FeatureSchema, its `source` holding the provenance, the counts
  per (split, domain, task), the dense scaling and what the checks found."""
  counts = [int(k) for k in sizes]
  rows, positives, dmin, dmax = stats.rows, stats.positives, stats.dense_min, stats.dense_max
  per_domain = {}
  for k, split in enumerate(SPLITS):
    per_domain[split] = {}
    for d, dname in enumerate(spec.domain_names):
      r = int(rows[k, d])
      per_domain[split][dname] = {
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
      "counts": per_domain,
      "oov_rows": {s: {f.name: int(oov[k, j]) for j, f in enumerate(spec.sparse)}
                   for k, s in enumerate(SPLITS)},
      "sparse_vocabularies": {f.name: _vocabulary_record(f, spec) for f in spec.sparse},
      "dense_scaling": _scaling_record(spec, stats),
      "dense_min": {q: float(dmin[i]) for i, q in enumerate(spec.dense_names)},
      "dense_max": {q: float(dmax[i]) for i, q in enumerate(spec.dense_names)},
      "oov_id": encode.OOV_ID,
      "checks": checks,
      # Size and CRC-32 of each columnar file, compared by `integrity.verify`.
      "prepared_files": files,
  }
  return FeatureSchema(
      sparse_names=tuple(f.name for f in spec.sparse),
      vocab_sizes=tuple(encode.vocabulary_size(f, v)
                        for f, v in zip(spec.sparse, stats.vocabularies)),
      dense_names=spec.dense_names,
      domain_names=spec.domain_names,
      task_names=spec.task_names,
      sparse_widths=tuple(f.width for f in spec.sparse),
      source=source)


def _vocabulary_record(feature: FeatureDef, spec: PrepareSpec) -> dict[str, Any]:
  """How a feature's raw values become ids, for serving."""
  if feature.kind == "hashed":
    return {"mode": "hash", "buckets": int(feature.buckets), "width": feature.width,
            **(feature.describe or {})}
  return {"mode": spec.vocabulary, "min_count": int(feature.min_count),
          "width": feature.width, **(feature.describe or {})}


def _scaling_record(spec: PrepareSpec, stats: encode.Statistics) -> dict[str, Any]:
  """Per dense feature: its transform before scaling, and the scaling fitted on
  the training rows."""
  scaling = spec.dense_scaling or ("minmax",) * len(spec.dense_names)
  transforms = spec.dense_transforms or ("",) * len(spec.dense_names)
  out = {}
  for q, name in enumerate(spec.dense_names):
    record = {"transform": transforms[q] or None, "scaling": scaling[q],
              "missing": "0 after scaling"}
    if scaling[q] == "minmax":
      record.update(min=float(stats.dense_min[q]), span=float(stats.dense_span[q]))
    elif scaling[q] == "standard":
      record.update(mean=float(stats.dense_mean[q]), std=float(stats.dense_std[q]))
    out[name] = record
  return out


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
  for name, m in (checks.get("unmatched_side_rows") or {}).items():
    lines.append(f"log rows without a match in side table {name!r}: {m['rows']:,} of "
                 f"{m['of']:,} ({'kept with no value' if m['policy'] == 'keep' else 'dropped'})")
  if checks.get("rows_outside_top_n_domains"):
    lines.append(f"rows of domains outside top_n, dropped: "
                 f"{checks['rows_outside_top_n_domains']:,}")
  for name, rows in (checks.get("multi_valued_truncated_rows") or {}).items():
    if rows:
      lines.append(f"rows with more {name!r} values than its slots (the rest dropped): "
                   f"{rows:,}")
  for f, m in (checks.get("missing_features") or {}).items():
    example = f", e.g. {m['example_ids']}" if m["ids"] else ""
    lines.append(
        f"rows whose {m['id_column']} is absent from {os.path.basename(f)} (given "
        f"missing features): {m['rows']:,} of {m['rows_checked']:,} ({m['ids']:,} "
        f"distinct ids{example})")
  return lines
