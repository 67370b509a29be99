"""The stable hash of categorical values for hashed vocabularies.

A value's id is `1 + h(value) mod buckets`, where h is the first 8 bytes,
little-endian, of BLAKE2b over the value's UTF-8 text keyed with `HASH_KEY`
(id 0 stays the out-of-vocabulary id, for an empty or missing value). It is
the same in every process, on every machine and in every run (unlike Python's
salted `hash()`), and a serving client reproduces it with any BLAKE2b
(`describe()` is what the schema records).
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

HASH_KEY = b"m3oe-jax/feature-hash/v1"
HASH_NAME = "blake2b-64"


def value_hash(text: str) -> int:
  """h(text): the unsigned 64-bit hash of one value."""
  digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=HASH_KEY).digest()
  return int.from_bytes(digest, "little")


def hashed_ids(texts: Iterable[str], buckets: int) -> np.ndarray:
  """int64 ids in 1..buckets of `texts`."""
  h = np.fromiter((value_hash(t) for t in texts), np.uint64)
  return (h % np.uint64(buckets)).astype(np.int64) + 1


def describe(buckets: int) -> dict:
  """What serving needs to reproduce the ids."""
  return {"hash": HASH_NAME, "key": HASH_KEY.decode(), "buckets": int(buckets),
          "id": "1 + (little-endian uint64 of blake2b(utf8(value), digest_size=8, "
                "key=key)) mod buckets; 0 for an empty or missing value"}
