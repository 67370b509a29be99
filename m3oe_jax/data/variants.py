"""The training variants of the paper's Table 2, as views of one prepared dataset.

A variant keeps a subset of the domains and of the tasks (`config.variant.domains`,
`config.variant.tasks`; empty: all):
  one model per (domain, task)  domains=(d,), tasks=(t,)
  -MTL, one model per domain    domains=(d,)
  -MDL, one model per task      tasks=(t,)
  -MDMT, one model              (both empty)

By default the splits are the prepared ones, filtered: every variant is scored
on the same test rows. `config.variant.per_variant_split=True` reproduces the
authors' scripts instead: their rows are filtered first and then cut 80/10/10
in file order. That is exact when the data was split sequentially in file order
(the builders' `reference` split), since train, validation and test then
concatenate back to the file order. (Their scripts also refit the vocabularies
per variant; here the vocabularies stay those of the whole prepared data.)

Domains and tasks may be given by index or by name; the kept ones keep their
names (so a variant's per-(domain, task) metrics combine into the full table)
and are renumbered 0..D'-1 in the order given.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from m3oe_jax.data.pipeline import SPLITS, Dataset
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.errors import ConfigError

_CHUNK = 1 << 20


def check_config(config) -> None:
  """Refuses, before any data is prepared, a `config.variant` whose domains or
  tasks are not lists of names and indices >= 0, each once (the names and the
  index range are checked against the data in `select`)."""
  for field in ("domains", "tasks"):
    items = config[field]
    if not isinstance(items, (tuple, list)) or not all(
        isinstance(i, str) or (isinstance(i, int) and not isinstance(i, bool) and i >= 0)
        for i in items):
      raise ConfigError(f"config.variant.{field}={items!r} must be a list of names or "
                        "indices >= 0 (empty: all)")
    if len(set(items)) != len(items):
      raise ConfigError(f"config.variant.{field}={tuple(items)} lists an item twice")
  if not isinstance(config.get("per_variant_split", False), bool):
    raise ConfigError("config.variant.per_variant_split must be True or False, got "
                      f"{config.per_variant_split!r}")


def _resolve(wanted: Sequence, names: Sequence[str], field: str) -> list[int]:
  indices = []
  for item in wanted:
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
      index = int(item)
    elif str(item) in names:
      index = list(names).index(str(item))
    elif str(item).lstrip("-").isdigit():
      index = int(item)
    else:
      raise ConfigError(f"config.variant.{field}: {item!r} is neither an index nor one of "
                        f"{list(names)}")
    if not 0 <= index < len(names):
      raise ConfigError(f"config.variant.{field}: index {index} is out of range; the data "
                        f"has {len(names)}: {list(names)}")
    if index in indices:
      raise ConfigError(f"config.variant.{field}: {item!r} is listed twice")
    indices.append(index)
  return indices


class SubsetSource:
  """Rows `rows` of `source`, their domains renumbered and their labels cut to
  `tasks`."""

  def __init__(self, source, rows: np.ndarray, domain_map: np.ndarray, tasks: list[int]):
    self.source, self.rows, self.domain_map, self.tasks = source, rows, domain_map, tasks

  def __len__(self) -> int:
    return len(self.rows)

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    batch = dict(self.source.take(self.rows[np.asarray(indices)]))
    batch["domain"] = self.domain_map[np.asarray(batch["domain"])].astype(np.int32)
    batch["labels"] = np.asarray(batch["labels"])[:, self.tasks]
    return batch


class _Concatenation:
  """Several sources read as one, in order."""

  def __init__(self, sources):
    self.sources = sources
    self.starts = np.cumsum([0] + [len(s) for s in sources])

  def __len__(self) -> int:
    return int(self.starts[-1])

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices)
    which = np.searchsorted(self.starts, indices, side="right") - 1
    parts, order = [], []
    for k, source in enumerate(self.sources):
      chosen = np.nonzero(which == k)[0]
      if len(chosen):
        parts.append(source.take(indices[chosen] - self.starts[k]))
        order.append(chosen)
    inverse = np.argsort(np.concatenate(order), kind="stable")
    return {key: np.concatenate([np.asarray(p[key]) for p in parts])[inverse]
            for key in parts[0]}


def _domain_column(source) -> np.ndarray:
  n = len(source)
  return np.concatenate([np.asarray(source.take(np.arange(lo, min(lo + _CHUNK, n)))["domain"])
                         for lo in range(0, n, _CHUNK)] or [np.zeros(0, np.int32)])


def select(dataset: Dataset, domains: Sequence = (), tasks: Sequence = (),
           per_variant_split: bool = False) -> Dataset:
  """The variant of `dataset` keeping `domains` and `tasks` (empty: all)."""
  schema = dataset.schema
  domain_ids = _resolve(domains, schema.domain_names, "domains") or list(range(schema.num_domains))
  task_ids = _resolve(tasks, schema.task_names, "tasks") or list(range(schema.num_tasks))
  everything = (domain_ids == list(range(schema.num_domains))
                and task_ids == list(range(schema.num_tasks)))
  if everything and not per_variant_split:
    return dataset
  domain_map = np.full(schema.num_domains, -1, np.int64)
  domain_map[domain_ids] = np.arange(len(domain_ids))

  splits, true_probs = {}, None if dataset.true_probs is None else {}
  if per_variant_split:
    whole = _Concatenation([dataset.splits[s] for s in SPLITS])
    kept = np.nonzero(np.isin(_domain_column(whole), domain_ids))[0]
    sizes = [len(dataset.splits[s]) for s in SPLITS]
    bounds = np.round(np.cumsum([0] + sizes) / sum(sizes) * len(kept)).astype(int)
    probs = (None if true_probs is None
             else np.concatenate([dataset.true_probs[s] for s in SPLITS]))
    for k, name in enumerate(SPLITS):
      rows = kept[bounds[k]:bounds[k + 1]]
      splits[name] = SubsetSource(whole, rows, domain_map, task_ids)
      if probs is not None:
        true_probs[name] = probs[rows][:, task_ids]
  else:
    for name in SPLITS:
      source = dataset.splits[name]
      rows = np.nonzero(np.isin(_domain_column(source), domain_ids))[0]
      splits[name] = SubsetSource(source, rows, domain_map, task_ids)
      if true_probs is not None:
        true_probs[name] = dataset.true_probs[name][rows][:, task_ids]
  for name, source in splits.items():
    if len(source) == 0:
      raise ConfigError(f"config.variant.domains={tuple(domains)}: the {name} split has no "
                        "row of these domains")
  variant = {"domains": [schema.domain_names[d] for d in domain_ids],
             "tasks": [schema.task_names[t] for t in task_ids],
             "per_variant_split": bool(per_variant_split)}
  subset_schema = FeatureSchema(
      sparse_names=schema.sparse_names, vocab_sizes=schema.vocab_sizes,
      dense_names=schema.dense_names, domain_names=tuple(variant["domains"]),
      task_names=tuple(variant["tasks"]), sparse_widths=schema.sparse_widths,
      source={**schema.source, "variant": variant,
              "variant_rows": {name: len(s) for name, s in splits.items()}})
  return Dataset(schema=subset_schema, splits=splits, true_probs=true_probs)
