"""New log rows of a files dataset encoded as its prepared rows were, for scoring.

The features are read by the preparation's own `LogFeatures`, with each 'train'
vocabulary frozen to the prepared one (`vocab/<feature>.npy`: a value outside
it gets the OOV id 0), hashed features hashed as in training, and the dense
values scaled with the figures the prepared schema recorded
(`source.dense_scaling`); nothing is fitted again. Labels, times and splits
are not read.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import pyarrow as pa

from m3oe_jax.data.raw import encode, log_features, roles
from m3oe_jax.data.raw.declaration import DOMAIN_FEATURE, Declaration
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.errors import WorkdirError

UNKNOWN_DOMAIN = -1


@dataclasses.dataclass
class EncodedRows:
  inputs: dict[str, np.ndarray]  # sparse int32 [n, S], dense float32 [n, Q], domain int32 [n]
  known: np.ndarray  # bool [n]: the row's domain is one of the model's


class NewRows:
  """Encodes log batches into the model's inputs.

  `prepared` is the prepared dataset's schema, `model` the checkpoint's (a
  variant's keeps fewer domains and tasks, renumbered), `vocabularies` the
  prepared values of each 'train' feature and of the domain feature."""

  def __init__(self, d: Declaration, prepared: FeatureSchema, model: FeatureSchema,
               vocabularies: Mapping[str, np.ndarray], chunk_rows: int):
    same = ("sparse_names", "vocab_sizes", "dense_names")
    if any(getattr(prepared, k) != getattr(model, k) for k in same):
      raise WorkdirError(
          f"the prepared data's features {prepared.sparse_names} + {prepared.dense_names} "
          f"(vocab sizes {prepared.vocab_sizes}) no longer match the checkpoint's "
          f"{model.sparse_names} + {model.dense_names} ({model.vocab_sizes}); prepare the "
          "checkpoint's config again, or pass --data_dir=<where it was prepared>")
    self.declaration = d
    encoders = {c.name: roles.CategoricalEncoder(
        c.vocabulary.mode, c.vocabulary.buckets, c.separator, c.max_values,
        vocabulary=(pa.array([str(v) for v in vocabularies[c.name].tolist()], pa.string())
                    if c.vocabulary.mode == "train" else None))
                for c in d.categorical}
    self.features = log_features.LogFeatures(d, encoders, chunk_rows)
    if d.domain.values:
      raw_to_prepared = {v: prepared.domain_names.index(name) for v, name in d.domain.values}
    else:  # top_n: the prepared domains are the kept raw values
      raw_to_prepared = {v: i for i, v in enumerate(prepared.domain_names)}
    self._raw_to_prepared = raw_to_prepared
    self._prepared_to_model = np.array(
        [model.domain_names.index(n) if n in model.domain_names else UNKNOWN_DOMAIN
         for n in prepared.domain_names] + [UNKNOWN_DOMAIN], np.int64)
    self._domain_vocabulary = (np.asarray(vocabularies[DOMAIN_FEATURE])
                               if d.domain.as_feature else None)
    records = prepared.source["dense_scaling"]
    dense = [records[n] for n in prepared.dense_names]
    self._scaling = [r["scaling"] for r in dense]
    self._figures = {k: np.array([r.get(k, default) for r in dense], np.float64)
                     for k, default in (("min", 0.0), ("span", 1.0), ("mean", 0.0),
                                        ("std", 1.0))}

  @property
  def joined(self):
    """The side tables, with their counts of log rows seen and unmatched."""
    return self.features.joined

  def prepared_domains(self, batch: pa.Table) -> np.ndarray:
    """Each row's domain index in the prepared data (UNKNOWN_DOMAIN for a value
    outside the declaration's map, or a missing one)."""
    return roles.lookup(batch.column(self.declaration.domain.column), self._raw_to_prepared)

  def encode(self, batch: pa.Table, place: roles.Place) -> EncodedRows:
    read = self.features.read(batch, place)
    prepared_domain = self.prepared_domains(batch)
    sparse = read.sparse
    if self._domain_vocabulary is not None:
      pos, found = encode.lookup_rows(self._domain_vocabulary, prepared_domain)
      sparse = np.concatenate([sparse, np.where(found, pos + 1, encode.OOV_ID)[:, None]], 1)
    domain = self._prepared_to_model[prepared_domain]  # -1 indexes the UNKNOWN_DOMAIN
    dense = encode.scale_columns(read.dense, self._scaling, self._figures["min"],
                                 self._figures["span"], self._figures["mean"],
                                 self._figures["std"])
    return EncodedRows({"sparse": sparse.astype(np.int32), "dense": dense,
                        "domain": domain.astype(np.int32)}, domain != UNKNOWN_DOMAIN)
