"""The declaration of a files dataset (`config.data.files`), checked into
dataclasses before anything is read.

Every problem is a ConfigError naming the field, e.g.
`config.data.files.tasks.like.threshold`. The fields are documented in
`m3oe_jax/configs/files.py` and docs/data.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from m3oe_jax.errors import ConfigError, is_number, is_whole

FORMATS = ("auto", "csv", "tsv", "parquet")
UNMATCHED = ("keep", "drop")
SCALINGS = ("minmax", "standard", "log")
LABEL_RULES = ("binary", "above", "present")
SPLIT_MODES = ("temporal", "random", "column", "files")
SPLIT_NAMES = ("train", "validation", "test")
DOMAIN_FEATURE = "domain"  # the sparse feature holding the domain index


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  mode: str  # "train" or "hash"
  min_count: int = 1
  buckets: int = 0


@dataclasses.dataclass(frozen=True)
class Categorical:
  name: str  # also the column it reads
  vocabulary: Vocabulary
  separator: str = ""  # multi-valued when set
  max_values: int = 1


@dataclasses.dataclass(frozen=True)
class SideTable:
  name: str
  path: str  # a glob; its files together form the table
  key: tuple[str, ...]  # the table's key columns
  log_key: tuple[str, ...]  # the logs' columns matched against them
  columns: tuple[str, ...]  # what the table adds to each log row
  format: str = "auto"


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  column: str
  rule: str  # one of LABEL_RULES
  threshold: float = 0.0


@dataclasses.dataclass(frozen=True)
class Domain:
  column: str
  values: tuple[tuple[str, str], ...] = ()  # (raw value, domain name), when mapped
  top_n: int = 0
  as_feature: bool = True

  @property
  def names(self) -> tuple[str, ...]:
    """The mapped domains, in the order they are first named."""
    return tuple(dict.fromkeys(d for _, d in self.values))


@dataclasses.dataclass(frozen=True)
class Split:
  mode: str  # one of SPLIT_MODES
  ratios: tuple[float, float, float] = (8.0, 1.0, 1.0)
  seed: int = 0
  column: str = ""  # the time column (temporal) or the split column (column)
  values: tuple[tuple[str, str], ...] = ()  # split column value -> split name
  files: tuple[tuple[str, str], ...] = ()  # split name -> glob (mode files)


@dataclasses.dataclass(frozen=True)
class Declaration:
  logs: tuple[str, ...]
  format: str
  side_tables: tuple[SideTable, ...]
  unmatched: str
  categorical: tuple[Categorical, ...]
  dense: tuple[tuple[str, str], ...]  # (column, scaling)
  domain: Domain
  tasks: tuple[Task, ...]
  split: Split

  @property
  def side_columns(self) -> dict[str, SideTable]:
    """Each column a side table adds, and its table."""
    return {c: t for t in self.side_tables for c in t.columns}

  def feature_columns(self) -> list[str]:
    """The log columns a row is scored from: its features, side-table keys and domain."""
    side = self.side_columns
    wanted = [c.name for c in self.categorical] + [c for c, _ in self.dense]
    wanted = [c for c in wanted if c not in side]
    wanted += [k for t in self.side_tables for k in t.log_key]
    wanted.append(self.domain.column)
    return list(dict.fromkeys(wanted))

  def log_columns(self) -> list[str]:
    """The columns every log file must have: the feature columns, labels, time or split."""
    wanted = self.feature_columns() + [t.column for t in self.tasks]
    if self.split.mode in ("temporal", "column"):
      wanted.append(self.split.column)
    return list(dict.fromkeys(wanted))


def _field(path: str) -> str:
  return f"config.data.files.{path}" if path else "config.data.files"


def _plain(value: Any) -> Any:
  """ConfigDicts as dicts, tuples as lists, all the way down."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def plain(value: Any) -> Any:
  """The declaration as plain JSON-able data (what the settings hash covers)."""
  return _plain(value)


def _mapping(value: Any, path: str, what: str) -> dict:
  if value is None:
    return {}
  if not isinstance(value, Mapping):
    raise ConfigError(f"{_field(path)}={value!r} must be a dict of {what}")
  return dict(value)


def _names(value: Any, path: str, allow_empty: bool = False) -> tuple[str, ...]:
  items = [value] if isinstance(value, str) else value
  if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items) or (
      not items and not allow_empty):
    raise ConfigError(f"{_field(path)}={value!r} must be a column name or a list of "
                      "non-empty names")
  if len(set(items)) != len(items):
    raise ConfigError(f"{_field(path)}={value!r} names a column twice")
  return tuple(items)


def _unknown(given: Mapping, known: tuple[str, ...], path: str) -> None:
  extra = sorted(set(given) - set(known))
  if extra:
    raise ConfigError(f"{_field(path)}: unknown field(s) {extra}; known: {list(known)}")


def _int(value: Any, path: str, lo: int) -> int:
  if not is_whole(value) or value < lo:
    raise ConfigError(f"{_field(path)}={value!r} must be a whole number >= {lo}")
  return int(value)


def _choice(value: Any, choices: tuple[str, ...], path: str) -> str:
  if value not in choices:
    raise ConfigError(f"{_field(path)}={value!r} must be one of {list(choices)}")
  return value


def _vocabulary(value: Any, path: str) -> Vocabulary:
  v = _mapping(value, path, "vocabulary settings") or {"mode": "train"}
  mode = _choice(v.get("mode", "train"), ("train", "hash"), f"{path}.mode")
  if mode == "hash":
    _unknown(v, ("mode", "buckets"), path)
    if "buckets" not in v:
      raise ConfigError(f"{_field(path)}: mode 'hash' needs 'buckets' (the number of ids)")
    return Vocabulary("hash", buckets=_int(v["buckets"], f"{path}.buckets", 1))
  _unknown(v, ("mode", "min_count"), path)
  return Vocabulary("train", min_count=_int(v.get("min_count", 1), f"{path}.min_count", 1))


def _categorical(d: dict) -> list[Categorical]:
  out = []
  for name, spec in _mapping(d.get("categorical"), "categorical",
                             "column -> settings").items():
    spec = _mapping(spec, f"categorical.{name}", "settings")
    _unknown(spec, ("vocabulary",), f"categorical.{name}")
    out.append(Categorical(name, _vocabulary(spec.get("vocabulary"),
                                             f"categorical.{name}.vocabulary")))
  for name, spec in _mapping(d.get("multi_valued"), "multi_valued",
                             "column -> settings").items():
    path = f"multi_valued.{name}"
    spec = _mapping(spec, path, "settings")
    _unknown(spec, ("separator", "max_values", "vocabulary"), path)
    sep = spec.get("separator", "|")
    if not isinstance(sep, str) or not sep:
      raise ConfigError(f"{_field(path + '.separator')}={sep!r} must be a non-empty string")
    out.append(Categorical(name, _vocabulary(spec.get("vocabulary"), path + ".vocabulary"),
                           separator=sep,
                           max_values=_int(spec.get("max_values", 4), path + ".max_values",
                                           1)))
  return out


def _side_tables(d: dict) -> list[SideTable]:
  tables = d.get("side_tables") or []
  if not isinstance(tables, list):
    raise ConfigError(f"{_field('side_tables')}={tables!r} must be a list of tables")
  out = []
  for i, t in enumerate(tables):
    path = f"side_tables[{i}]"
    t = _mapping(t, path, "table settings")
    _unknown(t, ("name", "path", "key", "log_key", "columns", "format"), path)
    for required in ("path", "key", "columns"):
      if required not in t:
        raise ConfigError(f"{_field(path)}: needs '{required}'")
    if not isinstance(t["path"], str) or not t["path"]:
      raise ConfigError(f"{_field(path + '.path')}={t['path']!r} must be a path or glob")
    key = _names(t["key"], path + ".key")
    log_key = _names(t.get("log_key", list(key)), path + ".log_key")
    if len(log_key) != len(key):
      raise ConfigError(f"{_field(path + '.log_key')}={list(log_key)} must name as many "
                        f"columns as key {list(key)}")
    name = t.get("name", f"side_table_{i}")
    out.append(SideTable(str(name), t["path"], key, log_key,
                         _names(t["columns"], path + ".columns"),
                         _choice(t.get("format", "auto"), FORMATS, path + ".format")))
  return out


def _tasks(d: dict) -> list[Task]:
  tasks = _mapping(d.get("tasks"), "tasks", "task -> label rule")
  if not tasks:
    raise ConfigError(f"{_field('tasks')}: declare at least one task, e.g. "
                      "{'click': {'column': 'click'}}")
  out = []
  for name, spec in tasks.items():
    path = f"tasks.{name}"
    spec = _mapping(spec, path, "label settings")
    _unknown(spec, ("column", "rule", "threshold"), path)
    if not isinstance(spec.get("column"), str) or not spec["column"]:
      raise ConfigError(f"{_field(path + '.column')} must name the label's column")
    rule = _choice(spec.get("rule", "binary"), LABEL_RULES, path + ".rule")
    threshold = spec.get("threshold", 0.0)
    if rule == "above" and ("threshold" not in spec or not is_number(threshold)):
      raise ConfigError(f"{_field(path + '.threshold')}={threshold!r}: rule 'above' "
                        "needs a number (label = value > threshold)")
    out.append(Task(str(name), spec["column"], rule, float(threshold)))
  return out


def _domain(d: dict) -> Domain:
  spec = _mapping(d.get("domain"), "domain", "domain settings")
  _unknown(spec, ("column", "values", "top_n", "as_feature"), "domain")
  if not isinstance(spec.get("column"), str) or not spec["column"]:
    raise ConfigError(f"{_field('domain.column')} must name the scenario column")
  values = _mapping(spec.get("values"), "domain.values", "raw value -> domain name")
  top_n = spec.get("top_n", 0)
  if bool(values) == bool(top_n):
    raise ConfigError(f"{_field('domain')}: give exactly one of 'values' (raw value -> "
                      "domain name) and 'top_n' (the n most frequent values)")
  if top_n:
    top_n = _int(top_n, "domain.top_n", 1)
  if not all(isinstance(v, str) and v for v in values.values()):
    raise ConfigError(f"{_field('domain.values')}={values!r}: domain names must be "
                      "non-empty strings")
  as_feature = spec.get("as_feature", True)
  if not isinstance(as_feature, bool):
    raise ConfigError(f"{_field('domain.as_feature')}={as_feature!r} must be True or False")
  return Domain(spec["column"], tuple((str(k), v) for k, v in values.items()), int(top_n),
                as_feature)


def _ratios(value: Any, path: str) -> tuple[float, float, float]:
  ok = isinstance(value, list) and len(value) == 3 and all(
      is_number(r) and 0 < r < float("inf") for r in value)
  if not ok:
    raise ConfigError(f"{_field(path)}={value!r} must be three positive numbers "
                      "(train, validation, test), e.g. [8, 1, 1]")
  return tuple(float(r) for r in value)


def _split(d: dict) -> Split:
  spec = _mapping(d.get("split"), "split", "split settings") or {"mode": "random"}
  mode = _choice(spec.get("mode"), SPLIT_MODES, "split.mode")
  known = {"temporal": ("mode", "column", "ratios"), "random": ("mode", "seed", "ratios"),
           "column": ("mode", "column", "values"),
           "files": ("mode", "validation", "test")}[mode]
  _unknown(spec, known, "split")
  ratios = _ratios(spec.get("ratios", [8.0, 1.0, 1.0]), "split.ratios")
  if mode == "random":
    return Split(mode, ratios, seed=_int(spec.get("seed", 0), "split.seed", 0))
  if mode in ("temporal", "column"):
    if not isinstance(spec.get("column"), str) or not spec["column"]:
      raise ConfigError(f"{_field('split.column')} must name the "
                        f"{'time' if mode == 'temporal' else 'split'} column")
  if mode == "temporal":
    return Split(mode, ratios, column=spec["column"])
  if mode == "column":
    values = _mapping(spec.get("values"), "split.values", "value -> split name") or {
        s: s for s in SPLIT_NAMES}
    bad = sorted({v for v in values.values()} - set(SPLIT_NAMES))
    if bad:
      raise ConfigError(f"{_field('split.values')}: {bad} are not split names "
                        f"{list(SPLIT_NAMES)}")
    return Split(mode, column=spec["column"],
                 values=tuple((str(k), v) for k, v in values.items()))
  for name in ("validation", "test"):
    if not isinstance(spec.get(name), str) or not spec[name]:
      raise ConfigError(f"{_field('split.' + name)} must be a glob of the {name} logs "
                        "(config.data.files.logs are the training logs)")
  return Split(mode, files=(("validation", spec["validation"]), ("test", spec["test"])))


def parse(files: Any) -> Declaration:
  """`config.data.files` checked; a ConfigError names the first bad field."""
  d = _mapping(_plain(files), "", "declaration fields")
  _unknown(d, ("logs", "format", "side_tables", "unmatched", "categorical", "multi_valued",
               "dense", "domain", "tasks", "split"), "")
  logs = d.get("logs")
  logs = [logs] if isinstance(logs, str) else logs
  if not logs or not isinstance(logs, list) or not all(isinstance(g, str) and g for g in logs):
    raise ConfigError(f"{_field('logs')}={d.get('logs')!r} must be a glob of the log "
                      "files (or a list of globs), e.g. 'logs/*.csv'")
  dense = _mapping(d.get("dense"), "dense", "column -> scaling")
  for name, scaling in dense.items():
    _choice(scaling, SCALINGS, f"dense.{name}")
  categorical = _categorical(d)
  domain = _domain(d)
  names = [c.name for c in categorical] + list(dense)
  if domain.as_feature:
    names.append(DOMAIN_FEATURE)
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ConfigError(f"{_field('')}: {twice} declared twice (as features, or a feature "
                      f"named {DOMAIN_FEATURE!r} beside domain.as_feature)")
  slashed = [n for n in names if "/" in n]
  if slashed:
    raise ConfigError(f"{_field('')}: feature names may not contain '/': {slashed}")
  if not categorical and not dense and not domain.as_feature:
    raise ConfigError(f"{_field('')}: declare some features (categorical, multi_valued "
                      "or dense)")
  side = _side_tables(d)
  taken = [c for t in side for c in t.columns]
  twice = sorted({c for c in taken if taken.count(c) > 1})
  if twice:
    raise ConfigError(f"{_field('side_tables')}: columns {twice} are taken from several "
                      "tables")
  undeclared = sorted(set(taken) - set(names))
  if undeclared:
    raise ConfigError(f"{_field('side_tables')}: columns {undeclared} are taken from a side "
                      "table but declared as no feature (categorical, multi_valued or dense)")
  tasks = _tasks(d)
  split = _split(d)
  log_only = [domain.column] + [t.column for t in tasks] + (
      [split.column] if split.column else [])
  from_side = sorted(set(log_only) & set(taken))
  if from_side:
    raise ConfigError(f"{_field('side_tables')}: {from_side} must come from the logs (the "
                      "domain, label, time and split columns are read from the log files)")
  return Declaration(
      logs=tuple(logs),
      format=_choice(d.get("format", "auto"), FORMATS, "format"),
      side_tables=tuple(side),
      unmatched=_choice(d.get("unmatched", "keep"), UNMATCHED, "unmatched"),
      categorical=tuple(categorical),
      dense=tuple(dense.items()),
      domain=domain,
      tasks=tuple(tasks),
      split=split)
