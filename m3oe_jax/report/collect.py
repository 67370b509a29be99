"""Finds the runs of a sweep (or of any workdirs) and what state each is in.

A run is
  finished  its workdir has `metrics.json`;
  failed    sweep.json records it as failed (and it has no metrics.json);
  running   its workdir exists without metrics.json (training, interrupted or
            preempted: rerunning resumes it);
  missing   its workdir does not exist (never started, or results not copied back).
No run of a sweep is ever dropped: every one is listed with its status.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

STATUSES = ("finished", "running", "failed", "missing")


class ReportError(Exception):
  """Bad input to the report (missing directory, nothing to report)."""


@dataclasses.dataclass
class RunInfo:
  name: str
  model: str
  kind: str  # single | mtl | mdl | mdmt | custom | unknown
  seed: int | None
  workdir: pathlib.Path
  status: str
  domains: list = dataclasses.field(default_factory=list)  # indices (sweep) or names
  tasks: list = dataclasses.field(default_factory=list)
  error: str | None = None
  metrics: dict[str, Any] | None = None  # metrics.json
  _epochs: list[dict] | None = None

  @property
  def label(self) -> str:
    return f"{self.model}-{self.kind}"

  def epochs(self) -> list[dict]:
    """metrics.jsonl, one record per epoch (the last line of an epoch wins), by epoch."""
    if self._epochs is None:
      self._epochs = read_epochs(self.workdir / "metrics.jsonl")
    return self._epochs


def read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except ValueError as e:
    raise ReportError(f"{path}: not valid JSON ({e})") from e


def read_epochs(path: pathlib.Path) -> list[dict]:
  by_epoch: dict[int, dict] = {}
  try:
    lines = path.read_text().splitlines()
  except FileNotFoundError:
    return []
  for line in lines:
    line = line.strip()
    if not line:
      continue
    try:
      record = json.loads(line)
    except ValueError:
      continue  # a line cut by a kill
    by_epoch[int(record["epoch"])] = record
  return [by_epoch[e] for e in sorted(by_epoch)]


def infer_kind(metrics: dict) -> str:
  """The variant kind of a run from its metrics.json (for runs outside a sweep)."""
  variant = metrics.get("variant")
  if not variant:
    return "mdmt"
  d, t = len(variant.get("domains", [])), len(variant.get("tasks", []))
  if d == 1 and t == 1:
    return "single"
  if d == 1:
    return "mtl"
  if t == 1:
    return "mdl"
  return "custom"


def _status(workdir: pathlib.Path, recorded: str | None) -> str:
  if (workdir / "metrics.json").exists():
    return "finished"
  if recorded == "failed":
    return "failed"
  if workdir.exists():
    return "running"
  return "missing"


def from_sweep(sweep_dir: pathlib.Path) -> tuple[list[RunInfo], dict]:
  sweep = read_json(sweep_dir / "sweep.json")
  if not isinstance(sweep, dict) or "runs" not in sweep:
    raise ReportError(f"{sweep_dir / 'sweep.json'}: not a sweep record (no 'runs')")
  runs = []
  for r in sweep["runs"]:
    workdir = sweep_dir / r["workdir"]
    status = _status(workdir, r.get("status"))
    run = RunInfo(name=r["name"], model=r["model"], kind=r["kind"], seed=r.get("seed"),
                  workdir=workdir, status=status, domains=list(r.get("domains", [])),
                  tasks=list(r.get("tasks", [])),
                  error=r.get("error") if status == "failed" else None)
    if status == "finished":
      run.metrics = read_json(workdir / "metrics.json")
    runs.append(run)
  return runs, sweep


def from_run_dir(workdir: pathlib.Path, name: str) -> RunInfo:
  metrics = read_json(workdir / "metrics.json")
  if metrics is None:
    return RunInfo(name=name, model="unknown", kind="unknown", seed=None, workdir=workdir,
                   status="running")
  variant = metrics.get("variant") or {}
  return RunInfo(name=name, model=metrics.get("model", "unknown"), kind=infer_kind(metrics),
                 seed=metrics.get("seed"), workdir=workdir, status="finished",
                 domains=list(variant.get("domains", [])),
                 tasks=list(variant.get("tasks", [])), metrics=metrics)


def _is_run_dir(path: pathlib.Path) -> bool:
  return (path / "metrics.json").is_file() or (path / "checkpoints").is_dir()


def collect(workdirs: list[str | pathlib.Path]) -> tuple[list[RunInfo], list[dict]]:
  """Every run under the given directories: a sweep directory (with sweep.json), a
  run's workdir, or a directory holding run workdirs at any depth.

  Returns (runs, sweep records). Raises ReportError on a directory that does not
  exist or holds no run.
  """
  if not workdirs:
    raise ReportError("no --workdir given")
  runs: list[RunInfo] = []
  sweeps: list[dict] = []
  for given in workdirs:
    path = pathlib.Path(given).expanduser()
    if not path.exists():
      raise ReportError(f"{given}: no such directory")
    if not path.is_dir():
      raise ReportError(f"{given}: not a directory")
    if (path / "sweep.json").exists():
      found, sweep = from_sweep(path)
      sweeps.append(sweep)
      runs += found
      continue
    if _is_run_dir(path):
      runs.append(from_run_dir(path, path.name))
      continue
    found = sorted({p.parent for p in path.rglob("metrics.json")}
                   | {p.parent for p in path.rglob("checkpoints") if p.is_dir()})
    found = [p for p in found if "checkpoints" not in p.relative_to(path).parts]
    if not found:
      raise ReportError(f"{given}: no sweep.json and no run (metrics.json or checkpoints/) "
                        "under it")
    runs += [from_run_dir(p, str(p.relative_to(path))) for p in found]
  seen = set()
  for run in runs:
    key = run.workdir.resolve()
    if key in seen:
      raise ReportError(f"{run.workdir}: the same run is given twice")
    seen.add(key)
  return runs, sweeps


def status_counts(runs: list[RunInfo]) -> dict[str, int]:
  return {s: sum(r.status == s for r in runs) for s in STATUSES}
