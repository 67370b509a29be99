"""The feature schema every dataset records and every model and checkpoint reads.

A batch (see `pipeline.py`) is a dict of arrays:
  sparse  int32   [B, W]  ids, `sparse_widths[k]` columns per `sparse_names` entry
                          (one, or the slots of a multi-valued feature), each in
                          [0, vocab); W = `sparse_width`
  dense   float32 [B, Q]  one column per `dense_names` entry
  domain  int32   [B]     in [0, len(domain_names))
  labels  float32 [B, T]  in {0, 1}, one column per `task_names` entry
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import numpy as np

BATCH_KEYS = ("sparse", "dense", "domain", "labels")


@dataclasses.dataclass(frozen=True)
class FeatureSchema:
  """Names and sizes of a dataset's features, domains and tasks.

  `source` records provenance (builder, version, archive checksum, split rule,
  row counts); it is informative and never affects the model.
  """

  sparse_names: tuple[str, ...]
  vocab_sizes: tuple[int, ...]
  dense_names: tuple[str, ...]
  domain_names: tuple[str, ...]
  task_names: tuple[str, ...]
  source: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # Columns per sparse feature: 1, or the slots of a multi-valued feature (ids
  # mean-pooled by the model, id 0 meaning "no value"). Empty: one each.
  sparse_widths: tuple[int, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "sparse_names", tuple(self.sparse_names))
    object.__setattr__(self, "vocab_sizes", tuple(int(v) for v in self.vocab_sizes))
    object.__setattr__(self, "dense_names", tuple(self.dense_names))
    object.__setattr__(self, "domain_names", tuple(str(d) for d in self.domain_names))
    object.__setattr__(self, "task_names", tuple(self.task_names))
    widths = tuple(int(w) for w in self.sparse_widths)
    object.__setattr__(self, "sparse_widths", () if all(w == 1 for w in widths) else widths)
    if widths and len(widths) != len(self.sparse_names):
      raise ValueError(f"schema: {len(self.sparse_names)} sparse_names but "
                       f"{len(widths)} sparse_widths")
    if any(w < 1 for w in widths):
      raise ValueError(f"schema: sparse_widths {widths} must be >= 1")
    if len(self.sparse_names) != len(self.vocab_sizes):
      raise ValueError(
          f"schema: {len(self.sparse_names)} sparse_names but "
          f"{len(self.vocab_sizes)} vocab_sizes")
    if len(set(self.sparse_names)) != len(self.sparse_names):
      raise ValueError(f"schema: duplicate sparse feature names in {self.sparse_names}")
    for name, vocab in zip(self.sparse_names, self.vocab_sizes):
      if vocab < 1:
        raise ValueError(f"schema: sparse feature {name!r} has vocab size {vocab} (< 1)")
    if not self.domain_names:
      raise ValueError("schema: at least one domain is required")
    if not self.task_names:
      raise ValueError("schema: at least one task is required")

  @property
  def num_domains(self) -> int:
    return len(self.domain_names)

  @property
  def num_tasks(self) -> int:
    return len(self.task_names)

  @property
  def num_sparse(self) -> int:
    return len(self.sparse_names)

  @property
  def widths(self) -> tuple[int, ...]:
    """Columns of `sparse` per sparse feature."""
    return self.sparse_widths or (1,) * self.num_sparse

  @property
  def sparse_width(self) -> int:
    """Columns of the `sparse` array."""
    return sum(self.widths)

  @property
  def sparse_columns(self) -> tuple[str, ...]:
    """A name per column of `sparse`: the feature's, or `name[i]` for slot i of
    a multi-valued feature."""
    return tuple(n if w == 1 else f"{n}[{i}]"
                 for n, w in zip(self.sparse_names, self.widths) for i in range(w))

  @property
  def num_dense(self) -> int:
    return len(self.dense_names)

  def model_signature(self) -> dict[str, Any]:
    """The part of the schema a trained model depends on (not provenance)."""
    signature = {
        "sparse_names": list(self.sparse_names),
        "vocab_sizes": list(self.vocab_sizes),
        "dense_names": list(self.dense_names),
        "domain_names": list(self.domain_names),
        "task_names": list(self.task_names),
    }
    if self.sparse_widths:  # absent when every feature has one column, as before
      signature["sparse_widths"] = list(self.sparse_widths)
    return signature

  def to_dict(self) -> dict[str, Any]:
    return {**self.model_signature(), "source": dict(self.source)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSchema":
    return cls(
        sparse_names=d["sparse_names"],
        vocab_sizes=d["vocab_sizes"],
        dense_names=d["dense_names"],
        domain_names=d["domain_names"],
        task_names=d["task_names"],
        source=d.get("source", {}),
        sparse_widths=tuple(d.get("sparse_widths", ())),
    )

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=_json_default)

  @classmethod
  def from_json(cls, text: str) -> "FeatureSchema":
    return cls.from_dict(json.loads(text))

  def validate_columns(self, columns: Mapping[str, np.ndarray], where: str) -> None:
    """Checks that `columns` hold a well-formed batch or split for this schema."""
    missing = [k for k in BATCH_KEYS if k not in columns]
    if missing:
      raise ValueError(f"{where}: missing columns {missing}")
    n = len(columns["domain"])
    expected = {
        "sparse": (n, self.sparse_width),
        "dense": (n, self.num_dense),
        "domain": (n,),
        "labels": (n, self.num_tasks),
    }
    for key, shape in expected.items():
      if tuple(columns[key].shape) != shape:
        raise ValueError(
            f"{where}: column {key!r} has shape {tuple(columns[key].shape)}, "
            f"expected {shape}")


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")
