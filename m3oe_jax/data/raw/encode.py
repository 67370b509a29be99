"""Raw values to model inputs: sparse values to ids, dense values to [0, 1].

`StringCoder` gives string categories stable int64 codes while rows are read;
`IdTable` holds a feature table's columns keyed by id.
`collect_statistics` finds, in one pass over the spilled rows, each sparse
feature's vocabulary (the values of the training rows, or of every split's rows
under `vocabulary='all_rows'`), the training rows' dense minimum and maximum,
and the rows and positives per (split, domain, task). `encode_splits` then
writes every split's columnar files: value i of a vocabulary gets id i + 1, and
id 0 is the out-of-vocabulary id of every sparse feature; `save_vocabularies`
keeps the raw values behind the ids, for mapping new raw values later.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from m3oe_jax.data.pipeline import SPLITS
from m3oe_jax.data.raw import RawDataError
from m3oe_jax.data.raw.key_index import KeyIndex
from m3oe_jax.data.raw.storage import COLUMNAR_DIR, VOCAB_DIR, NpyWriter, row_slices

OOV_ID = 0


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


class ArrowStringCoder:
  """Like StringCoder (codes in order of first appearance), with the look-up
  of a batch's distinct strings done in a lasting `KeyIndex` of the strings
  coded so far instead of a Python dict: the faster one for many distinct
  values per batch (user ids)."""

  def __init__(self):
    self.index = KeyIndex()

  @property
  def strings(self) -> list[str]:
    return self.index.keys.to_pylist()

  def row_codes(self, words: pa.Array, missing: int) -> np.ndarray:
    """The code of each of `words` (`missing` for a missing one), new ones
    added in order of first appearance: like `codes` of the words' dictionary,
    without dictionary-encoding the words that are known already."""
    pos = self.index.lookup(words)
    new = pos < 0
    valid = None
    if words.null_count:
      valid = words.is_valid().to_numpy(zero_copy_only=False)
      new &= valid
    if new.any():
      fresh = words.filter(pa.array(new)).dictionary_encode()
      pos[new] = len(self.index) + fresh.indices.to_numpy(zero_copy_only=False)
      self.index.add(fresh.dictionary)
    if valid is not None:
      pos[~valid] = missing
    return pos

  def codes(self, words: pa.Array) -> np.ndarray:
    """The codes of distinct, non-missing `words`, new ones added."""
    pos = self.index.lookup(words)
    new = pos < 0
    if new.any():
      pos[new] = np.arange(len(self.index), len(self.index) + np.count_nonzero(new))
      self.index.add(words.filter(pa.array(new)))
    return pos


def frozen_ids(words: pa.Array, vocabulary: pa.Array) -> np.ndarray:
  """Model ids of `words` under a prepared vocabulary (its value i has id i + 1);
  values outside it get OOV_ID."""
  pos = pc.index_in(words.cast(pa.string()), value_set=vocabulary)
  return pc.add(pos, 1).fill_null(OOV_ID).to_numpy(zero_copy_only=False).astype(np.int64)


class IdTable:
  """Columns of a table keyed by a unique id (e.g. a per-user feature file),
  sorted by id for `lookup_rows`; a repeated id is refused naming its line."""

  def __init__(self, ids: np.ndarray, codes: dict[str, np.ndarray],
               dense: dict[str, np.ndarray], where: str, id_col: str,
               lines: np.ndarray):
    order = np.argsort(ids, kind="stable")
    self.ids = ids[order]
    dup = np.flatnonzero(self.ids[1:] == self.ids[:-1])
    if len(dup):
      i = order[dup[0] + 1]
      raise RawDataError(f"{where}, line {int(lines[i])}, column {id_col!r}: "
                         f"duplicate id {int(ids[i])}")
    self.codes = {k: v[order] for k, v in codes.items()}
    self.dense = {k: v[order] for k, v in dense.items()}


def lookup_rows(keys_sorted: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Positions of `query` in the sorted unique `keys_sorted`, and which were found."""
  if len(keys_sorted) == 0:
    return np.zeros(len(query), np.int64), np.zeros(len(query), bool)
  pos = np.minimum(np.searchsorted(keys_sorted, query), len(keys_sorted) - 1)
  return pos, keys_sorted[pos] == query


@dataclasses.dataclass
class Statistics:
  """What one pass over the spilled rows finds (`collect_statistics`)."""
  rows: np.ndarray  # int64 [3, D]: rows per (split, domain)
  positives: np.ndarray  # int64 [3, D, T]: positive labels per (split, domain, task)
  dense_min: np.ndarray  # float64 [Q], over the training rows' present values
  dense_max: np.ndarray  # float64 [Q]
  vocabularies: list[np.ndarray]  # per sparse feature, its sorted raw codes
  dense_mean: np.ndarray | None = None  # float64 [Q]
  dense_std: np.ndarray | None = None  # float64 [Q] (1 where the values are constant)

  @property
  def dense_span(self) -> np.ndarray:
    return np.where(self.dense_max > self.dense_min, self.dense_max - self.dense_min, 1.0)


# Raw code of "no value" in a feature of kind 'coded' (codes of a StringCoder):
# an empty or missing value, or an unused slot of a multi-valued feature. It
# never enters a vocabulary, so it is always encoded as OOV_ID.
NO_VALUE = -1


def feature_columns(features: Sequence[Any]) -> list[slice]:
  """The columns of the spilled `sparse` rows each feature occupies."""
  out, first = [], 0
  for f in features:
    width = getattr(f, "width", 1)
    out.append(slice(first, first + width))
    first += width
  return out


class _ValueCounts:
  """Distinct values and their counts, merged from blocks every few blocks so
  memory stays that of the distinct values."""

  def __init__(self):
    self.parts: list[tuple[np.ndarray, np.ndarray]] = []

  def add(self, values: np.ndarray) -> None:
    values = np.asarray(values, np.int64)
    if len(values) and 0 <= values.min() and values.max() < 4 * len(values) + 1024:
      found = np.bincount(values)  # small non-negative values: no sort
      unique = np.flatnonzero(found)
      self.parts.append((unique, found[unique]))
    else:
      self.parts.append(np.unique(values, return_counts=True))
    if len(self.parts) > 16:
      self.parts = [self.merged()]

  def merged(self) -> tuple[np.ndarray, np.ndarray]:
    if not self.parts:
      return np.zeros(0, np.int64), np.zeros(0, np.int64)
    values = np.concatenate([v for v, _ in self.parts])
    counts = np.concatenate([c for _, c in self.parts])
    unique, inverse = np.unique(values, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)


class _CodeCounts:
  """Counts of StringCoder codes (small non-negative ints), by bincount."""

  def __init__(self):
    self.counts = np.zeros(0, np.int64)

  def add(self, codes: np.ndarray) -> None:
    found = np.bincount(codes, minlength=len(self.counts))
    found[:len(self.counts)] += self.counts
    self.counts = found

  def merged(self) -> tuple[np.ndarray, np.ndarray]:
    values = np.flatnonzero(self.counts)
    return values.astype(np.int64), self.counts[values]


def code_table(vocabulary: np.ndarray) -> np.ndarray:
  """For a 'coded' feature: the id of every code up to the largest in the
  vocabulary, and OOV_ID for one past it (where larger codes and NO_VALUE go)."""
  top = int(vocabulary.max()) + 1 if len(vocabulary) else 0
  table = np.full(top + 1, OOV_ID, np.int32)
  table[vocabulary] = np.arange(1, len(vocabulary) + 1, dtype=np.int32)
  return table


def collect_statistics(rows: Mapping[str, Any], part: np.ndarray, num_domains: int,
                       all_rows_vocabulary: bool, chunk: int,
                       features: Sequence[Any] | None = None) -> Statistics:
  """Dense statistics from the training rows only (missing values, NaN, left
  out); vocabularies from the training rows, or from every split's rows when
  `all_rows_vocabulary`. A feature's vocabulary keeps the values seen at least
  its `min_count` times; a 'hashed' feature has none (its ids are final)."""
  S, Q, T = rows["sparse"].width, rows["dense"].width, rows["labels"].width
  features = features or [None] * S
  columns = feature_columns(features) if features[0] is not None else [
      slice(j, j + 1) for j in range(S)]
  D = num_domains
  counted = [_CodeCounts() if getattr(f, "kind", "int") == "coded" else _ValueCounts()
             for f in features]
  dmin = np.full(Q, np.inf)
  dmax = np.full(Q, -np.inf)
  dsum, dsumsq, dcount = np.zeros(Q), np.zeros(Q), np.zeros(Q)
  counts = np.zeros((3, D), np.int64)
  positives = np.zeros((3, D, T), np.int64)
  for s in row_slices(len(part), chunk):
    p = part[s]
    dom = np.asarray(rows["domain"][s])
    lab = np.asarray(rows["labels"][s]).reshape(-1, T)
    # Rows and positives per (split, domain): one bincount of split * D + domain.
    key = p.astype(np.intp) * D + dom
    counts += np.bincount(key, minlength=3 * D).reshape(3, D)
    for t in range(T):
      positives[:, :, t] += np.bincount(key, weights=lab[:, t], minlength=3 * D
                                        ).reshape(3, D).astype(np.int64)
    train = p == 0
    all_train = bool(train.all())
    if not train.any() and not all_rows_vocabulary:
      continue
    sp = np.asarray(rows["sparse"][s]).reshape(-1, S)
    if not all_rows_vocabulary and not all_train:
      sp = sp[train]
    for j, (f, cols) in enumerate(zip(features, columns)):
      kind = getattr(f, "kind", "int")
      if kind == "hashed":
        continue
      values = sp[:, cols].ravel()
      if kind == "coded":
        values = values[values != NO_VALUE]
      counted[j].add(values)
    if Q and train.any():
      de = np.asarray(rows["dense"][s]).reshape(-1, Q)
      if not all_train:
        de = de[train]
      present = ~np.isnan(de)
      dmin = np.minimum(dmin, np.where(present, de, np.inf).min(axis=0))
      dmax = np.maximum(dmax, np.where(present, de, -np.inf).max(axis=0))
      zeroed = np.where(present, de, 0.0)
      dsum += zeroed.sum(axis=0)
      dsumsq += np.square(zeroed).sum(axis=0)
      dcount += present.sum(axis=0)
  vocabs = []
  for f, c in zip(features, counted):
    values, n = c.merged()
    vocabs.append(values[n >= getattr(f, "min_count", 1)])
  dmin = np.where(np.isfinite(dmin), dmin, 0.0)
  dmax = np.where(np.isfinite(dmax), dmax, 0.0)
  mean = dsum / np.maximum(dcount, 1)
  var = np.maximum(dsumsq / np.maximum(dcount, 1) - np.square(mean), 0.0)
  std = np.where(var > 0, np.sqrt(var), 1.0)
  return Statistics(rows=counts, positives=positives, dense_min=dmin, dense_max=dmax,
                    vocabularies=vocabs, dense_mean=mean, dense_std=std)


def vocabulary_size(feature: Any, vocabulary: np.ndarray) -> int:
  """Ids of a feature, the OOV id 0 included."""
  if getattr(feature, "kind", "int") == "hashed":
    return int(feature.buckets) + 1
  return len(vocabulary) + 1


def scale_dense(values: np.ndarray, stats: Statistics, scaling: Sequence[str]) -> np.ndarray:
  """Dense values [n, Q] scaled per feature ('minmax', 'standard' or 'none',
  fitted on the training rows); a missing value (NaN) becomes 0."""
  return scale_columns(values, scaling, stats.dense_min, stats.dense_span, stats.dense_mean,
                       stats.dense_std)


def scale_columns(values: np.ndarray, scaling: Sequence[str], lo, span, mean, std
                  ) -> np.ndarray:
  """`scale_dense` with the fitted figures given per feature (`mean` and `std`
  are read only for 'standard' features)."""
  out = np.empty(values.shape, np.float32)
  for q, kind in enumerate(scaling):
    x = values[:, q]
    if kind == "minmax":
      x = (x - lo[q]) / span[q]
    elif kind == "standard":
      x = (x - mean[q]) / std[q]
    out[:, q] = np.nan_to_num(x, nan=0.0)
  return out


# Rows of a block of the sparse columns handled at once while encoding.
_CACHE_ROWS = 1 << 16


def encode_splits(rows: Mapping[str, Any], part: np.ndarray, sizes: Sequence[int],
                  stats: Statistics, out_dir: str, chunk: int,
                  features: Sequence[Any] | None = None,
                  dense_scaling: Sequence[str] = ()
                  ) -> tuple[dict[str, dict[str, Any]], np.ndarray]:
  """Writes `out_dir/columnar/<split>/{sparse,dense,domain,labels}.npy`; returns
  each file's size and CRC-32 by its path in the folder, and the values encoded
  as the out-of-vocabulary id per (split, sparse feature)."""
  S, Q, T = rows["sparse"].width, rows["dense"].width, rows["labels"].width
  features = features or [None] * S
  columns = feature_columns(features) if features[0] is not None else [
      slice(j, j + 1) for j in range(S)]
  scaling = tuple(dense_scaling) or ("minmax",) * Q
  vocabs = stats.vocabularies
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
  oov = np.zeros((3, len(features)), np.int64)
  kinds = [getattr(f, "kind", "int") for f in features]
  column_kind = np.array([kind for kind, cols in zip(kinds, columns)
                          for _ in range(cols.start, cols.stop)], object)
  coded_column = column_kind == "coded"
  hashed_column = column_kind == "hashed"
  # Every 'coded' column's ids from one table: feature j's slice of it is
  # [OOV_ID] + code_table(vocabulary), and raw codes are clipped to [-1, top + 1],
  # so NO_VALUE (and any negative code) and codes past the vocabulary's largest
  # get OOV_ID.
  offset = np.zeros(S, np.int64)
  high = np.zeros(S, np.int64)
  parts, size = [np.zeros(1, np.int32)], 1
  for j, (kind, cols) in enumerate(zip(kinds, columns)):
    if kind != "coded":
      continue
    table = code_table(vocabs[j])
    parts.append(np.concatenate([[OOV_ID], table]).astype(np.int32))
    offset[cols] = size + 1
    high[cols] = len(table) - 1
    size += len(table) + 1
  joined = np.concatenate(parts)
  first_columns = np.array([cols.start for cols in columns], np.intp)
  for s in row_slices(len(part), chunk):
    p = part[s]
    sp = np.asarray(rows["sparse"][s]).reshape(-1, S)
    ids = np.empty(sp.shape, np.int32)
    missed = np.empty(sp.shape, bool)
    if coded_column.any():
      top = np.minimum(high, np.iinfo(sp.dtype).max).astype(sp.dtype)
      # In blocks that stay in the cache: twice as quick as the whole chunk.
      for b in row_slices(len(sp), _CACHE_ROWS):
        index = np.clip(sp[b], sp.dtype.type(-1), top).astype(np.intp)
        index += offset
        joined.take(index, out=ids[b])
        np.equal(ids[b], OOV_ID, out=missed[b])
        missed[b] &= ~coded_column | (sp[b] != NO_VALUE)
    for j, (kind, cols) in enumerate(zip(kinds, columns)):
      raw = sp[:, cols]
      if kind == "hashed":
        ids[:, cols] = raw
      elif kind != "coded":
        pos, found = lookup_rows(vocabs[j], raw.ravel())
        ids[:, cols] = np.where(found, pos + 1, OOV_ID).reshape(raw.shape)
        missed[:, cols] = ~found.reshape(raw.shape)
    missed[:, hashed_column] = False
    de = scale_dense(np.asarray(rows["dense"][s]).reshape(-1, Q), stats, scaling) if Q \
        else np.zeros((len(p), 0), np.float32)
    dom = np.asarray(rows["domain"][s])
    lab = np.asarray(rows["labels"][s]).reshape(-1, T).astype(np.float32)
    if len(p) and p[0] == p[-1] and not np.any(p != p[0]):
      ranges = [(int(p[0]), slice(None))]  # the whole chunk in one split
    else:
      # One stable sort by split, then each split's rows are a contiguous range.
      order = np.argsort(p, kind="stable")
      ends = np.cumsum(np.bincount(p, minlength=3))
      ids, de, dom, lab, missed = (x[order] for x in (ids, de, dom, lab, missed))
      ranges = [(k, slice(ends[k - 1] if k else 0, ends[k])) for k in range(3)]
    for k, r in ranges:
      c = len(dom[r])
      if not c:
        continue
      o = outs[SPLITS[k]]
      o["sparse"].append(ids[r])
      o["dense"].append(de[r])
      o["domain"].append(dom[r])
      o["labels"].append(lab[r])
      if S:
        oov[k] += np.add.reduceat(np.count_nonzero(missed[r], axis=0), first_columns)
      filled[k] += c
  files = {}
  for split in SPLITS:
    for key, w in outs[split].items():
      w.close()
      files[f"{COLUMNAR_DIR}/{split}/{key}.npy"] = w.record()
  assert filled == counts, (filled, counts)
  return files, oov


def save_vocabularies(out_dir: str, features: Sequence[Any],
                      coders: Mapping[str, StringCoder], vocabs: Sequence[np.ndarray]) -> None:
  """Writes `out_dir/vocab/<feature>.npy`: the raw values (strings for string
  features) whose ids are 1, 2, ..."""
  vdir = os.path.join(out_dir, VOCAB_DIR)
  os.makedirs(vdir, exist_ok=True)
  for f, v in zip(features, vocabs):
    if f.kind == "hashed":
      continue  # no values: serving hashes them (the schema's `sparse_vocabularies`)
    if f.kind in ("str", "coded"):
      strings = coders[f.name].strings
      np.save(os.path.join(vdir, f.name + ".npy"), np.array([strings[i] for i in v]))
    else:
      np.save(os.path.join(vdir, f.name + ".npy"), v)
