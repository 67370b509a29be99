"""The reference file: another code's test numbers, to put beside this project's.

`python -m m3oe_jax.report --reference=FILE` reads it; `reproduce/side_by_side.py` writes it
from the authors' PyTorch code. One JSON object:

  {
    "format": "m3oe_jax.reference/1",
    "name": "authors' code",       (optional: the short name the report's columns give it)
    "description": "the authors' PyTorch code on MovieLens-100K",   (optional text)
    "source": {...},     (optional, any JSON object: code, commits, commands)
    "data": {...},       (optional, any JSON object: what the numbers were measured on)
    "domains": ["age_1_18", "age_25", "age_35_45_50_56"],
    "tasks": ["click", "like"],
    "rows": {
      "m3oe-mdmt": {                              a row of Table 2, MODEL-KIND as the sweep
        "seeds": {                                names it (KIND: single, mtl, mdl, mdmt)
          "2022": {
            "cells": {                            one per (domain, task) measured:
              "age_1_18/click": {"auc": 0.71, "logloss": 0.52},   "DOMAIN/TASK", the names
              ...                                                  of `domains` and `tasks`
            },
            ...                                   (any other keys: kept, not read)
          }
        },
        ...                                       (any other keys: kept, not read)
      }
    }
  }

AUC and logloss are on the 0-1 scale (not x 100); either may be null (not measured). A seed
is complete when it has every (domain, task) cell; as for this project's rows, a row's
overall AUC per seed is the mean of its cells' AUCs over complete seeds. `load` checks all of
this and raises a `ReferenceError` (a `ReportError`) of one line naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
from typing import Any

from m3oe_jax.report.collect import ReportError

FORMAT = "m3oe_jax.reference/1"
KINDS = ("single", "mtl", "mdl", "mdmt")
LABEL = re.compile(r"^[a-z0-9_]+-(" + "|".join(KINDS) + r")$")


class ReferenceError(ReportError):
  """A reference file that does not read or is not in the format."""


@dataclasses.dataclass
class ReferenceRow:
  label: str  # MODEL-KIND
  seeds: dict[int, dict[str, dict]]  # seed -> "domain/task" -> {"auc", "logloss"}

  @property
  def model(self) -> str:
    return self.label.rsplit("-", 1)[0]

  @property
  def kind(self) -> str:
    return self.label.rsplit("-", 1)[1]


@dataclasses.dataclass
class Reference:
  path: str
  name: str
  description: str
  domains: list[str]
  tasks: list[str]
  rows: dict[str, ReferenceRow]  # label -> row, in the file's order
  source: dict = dataclasses.field(default_factory=dict)
  data: dict = dataclasses.field(default_factory=dict)

  @property
  def pairs(self) -> list[str]:
    return [f"{d}/{t}" for d in self.domains for t in self.tasks]

  def complete(self, row: ReferenceRow, seed: int) -> bool:
    return all(p in row.seeds[seed] for p in self.pairs)


def _number(value, low: float, high: float) -> bool:
  return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                           and math.isfinite(value) and low <= value <= high)


def _names(value) -> bool:
  return (isinstance(value, list) and bool(value)
          and all(isinstance(v, str) and v and "/" not in v for v in value)
          and len(set(value)) == len(value))


def parse(value: Any, where: str) -> Reference:
  """A Reference from the JSON value of a file; ReferenceError (`where: why`) otherwise."""
  def bad(why: str):
    return ReferenceError(f"{where}: not a reference file ({FORMAT}): {why}")

  if not isinstance(value, dict):
    raise bad("not a JSON object")
  if value.get("format") != FORMAT:
    raise bad(f"'format' is {value.get('format')!r}, not {FORMAT!r}")
  for key in ("domains", "tasks"):
    if not _names(value.get(key)):
      raise bad(f"{key!r} is not a list of distinct names (without '/')")
  for key in ("source", "data"):
    if not isinstance(value.get(key, {}), dict):
      raise bad(f"{key!r} is not a JSON object")
  for key in ("name", "description"):
    if not isinstance(value.get(key, ""), str):
      raise bad(f"{key!r} is not text")
  rows = value.get("rows")
  if not isinstance(rows, dict) or not rows:
    raise bad("'rows' is not a non-empty object of rows by label")
  domains, tasks = value["domains"], value["tasks"]
  pairs = {f"{d}/{t}" for d in domains for t in tasks}
  parsed = {}
  for label, row in rows.items():
    if not LABEL.match(label):
      raise bad(f"row {label!r}: a label is MODEL-KIND with KIND one of {', '.join(KINDS)}")
    seeds = row.get("seeds") if isinstance(row, dict) else None
    if not isinstance(seeds, dict) or not seeds:
      raise bad(f"row {label!r}: no 'seeds' object")
    by_seed = {}
    for seed, entry in seeds.items():
      if not re.fullmatch(r"-?\d+", str(seed)):
        raise bad(f"row {label!r}: seed {seed!r} is not a whole number")
      cells = entry.get("cells") if isinstance(entry, dict) else None
      if not isinstance(cells, dict):
        raise bad(f"row {label!r}, seed {seed}: no 'cells' object")
      for pair, m in cells.items():
        if pair not in pairs:
          raise bad(f"row {label!r}, seed {seed}: cell {pair!r} is not DOMAIN/TASK of "
                    "'domains' and 'tasks'")
        if not (isinstance(m, dict) and "auc" in m and "logloss" in m
                and _number(m["auc"], 0.0, 1.0) and _number(m["logloss"], 0.0, math.inf)):
          raise bad(f"row {label!r}, seed {seed}, cell {pair!r}: needs 'auc' (0..1 or null) "
                    "and 'logloss' (>= 0 or null)")
      by_seed[int(seed)] = {p: {"auc": m["auc"], "logloss": m["logloss"]}
                            for p, m in cells.items()}
    parsed[label] = ReferenceRow(label=label, seeds=by_seed)
  return Reference(path=where, name=value.get("name") or "reference",
                   description=value.get("description", ""), domains=list(domains),
                   tasks=list(tasks), rows=parsed, source=dict(value.get("source", {})),
                   data=dict(value.get("data", {})))


def load(path: str | os.PathLike) -> Reference:
  """The reference file at `path`; a ReferenceError of one line naming it when it does not
  read or is not in the format."""
  path = pathlib.Path(path).expanduser()
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise ReferenceError(f"{path}: no such reference file") from None
  except IsADirectoryError:
    raise ReferenceError(f"{path}: a folder, not a reference file") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ReferenceError(f"{path}: does not read ({getattr(e, 'strerror', None) or e})") from None
  try:
    value = json.loads(text)
  except ValueError as e:
    raise ReferenceError(f"{path}: not JSON ({e})") from None
  return parse(value, str(path))


def document(domains: list[str], tasks: list[str], rows: dict[str, dict], *,
             name: str = "", description: str = "", source: dict | None = None,
             data: dict | None = None) -> dict:
  """A reference file's JSON object; `rows` is label -> {"seeds": {seed: {"cells": ...}}}
  (other keys kept). Checked by `parse` before it is returned."""
  value = {"format": FORMAT, "name": name, "description": description, "source": source or {},
           "data": data or {}, "domains": list(domains), "tasks": list(tasks),
           "rows": {label: {**row, "seeds": {str(s): e for s, e in row["seeds"].items()}}
                    for label, row in rows.items()}}
  parse(json.loads(json.dumps(value)), "the reference being written")
  return value
