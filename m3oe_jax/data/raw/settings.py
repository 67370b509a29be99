"""The preparation settings (`config.data.*` of the raw datasets): their checks
and their hash.

Every check of a preparation setting is here, each in one function, so a bad
value is refused with the same message wherever it is first met (the config
check before a run, the builder, `prepare()`). The hash names the prepared
folder of settings other than a builder's defaults.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from m3oe_jax.errors import ConfigError

SPLIT_KINDS = ("temporal", "random", "file_order")
# Which rows the sparse vocabularies are built from (settings key `vocabulary`).
VOCABULARIES = ("train", "all_rows")
DEFAULT_VOCABULARY = "train"
DEFAULT_CHUNK_ROWS = 1 << 20

def _is_int(value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, (int, np.integer)):
    return True
  return isinstance(value, (float, np.floating)) and float(value).is_integer()


def with_defaults(dataset: str, defaults: Mapping[str, Any],
                  overrides: Mapping[str, Any]) -> dict[str, Any]:
  """`overrides` over a builder's `defaults`, tuples as lists; a setting the
  builder does not know is refused."""
  unknown = set(overrides) - set(defaults)
  if unknown:
    raise ConfigError(f"{dataset}: unknown settings {sorted(unknown)}; known: "
                      f"{sorted(defaults)}")
  s = {**defaults, **overrides}
  return {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in s.items()}


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


def chunk_rows(value: Any) -> int:
  """`config.data.chunk_rows`: rows handled at once while preparing (memory, not output)."""
  return config_int(value, "chunk_rows", 1, None, "rows handled at once while preparing")


def settings_hash(settings: Mapping[str, Any]) -> str:
  # The default vocabulary is left out, so settings from before the
  # `vocabulary` option keep their hash (and their prepared folder).
  if settings.get("vocabulary", DEFAULT_VOCABULARY) == DEFAULT_VOCABULARY:
    settings = {k: v for k, v in settings.items() if k != "vocabulary"}
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha1(text.encode()).hexdigest()[:10]

