"""Finds the runs of a sweep (or of any workdirs) and what state each is in.

A run is
  finished  its workdir has `metrics.json`, and it is the run's own;
  rejected  its metrics.json is another run's: its model, seed, variant or config
            hash is not the one of sweep.json's record or of the run's own checkpoints;
  invalid   its metrics.json does not read (not JSON, or not what the trainer writes);
  failed    sweep.json records it as failed (and it has no metrics.json);
  running   its workdir exists without metrics.json (training, interrupted or
            preempted: rerunning resumes it);
  missing   its workdir does not exist (never started, or results not copied back).
No run of a sweep is ever dropped: every one is listed with its status. Rejected and
invalid runs are left out of the tables; `problems` says which and why, and which
finished runs could not be verified (no config hash to compare).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from m3oe_jax import run_identity

STATUSES = ("finished", "running", "failed", "missing", "rejected", "invalid")


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
  error: str | None = None  # failed: the error; rejected, invalid: why
  metrics: dict[str, Any] | None = None  # metrics.json (finished runs only)
  unverified: str | None = None  # a finished run whose config hash was not compared: why
  notes: list[str] = dataclasses.field(default_factory=list)  # lines of metrics.jsonl skipped
  _epochs: list[dict] | None = None

  @property
  def label(self) -> str:
    return f"{self.model}-{self.kind}"

  def epochs(self) -> list[dict]:
    """metrics.jsonl, one record per epoch (the last line of an epoch wins), by epoch."""
    if self._epochs is None:
      self._epochs = read_epochs(self.workdir / "metrics.jsonl", self.notes)
    return self._epochs


def _parse(path: pathlib.Path) -> tuple[Any, str | None]:
  """(the JSON in `path`, None when there is no such file; why it does not read)."""
  try:
    return json.loads(path.read_text()), None
  except FileNotFoundError:
    return None, None
  except ValueError as e:
    return None, f"not valid JSON ({e})"
  except OSError as e:
    return None, f"does not read ({e.strerror or e})"


def read_json(path: pathlib.Path):
  """The JSON in `path`, None when there is no such file; a ReportError naming it
  when it does not read."""
  value, why = _parse(path)
  if why:
    raise ReportError(f"{path}: {why}")
  return value


def _number(value, none: bool = True) -> bool:
  return (none and value is None) or (isinstance(value, (int, float))
                                      and not isinstance(value, bool))


def _integer(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _names(value) -> bool:
  return isinstance(value, list) and all(isinstance(v, str) for v in value)


def epoch_problem(record) -> str | None:
  """Why a metrics.jsonl record is not an epoch record the report can use (None if it is)."""
  if not isinstance(record, dict):
    return "not a JSON object"
  if not _integer(record.get("epoch")):
    return "no integer 'epoch'"
  pairs = record.get("validation")
  pairs = pairs.get("pairs") if isinstance(pairs, dict) else None
  if not isinstance(pairs, dict) or not all(isinstance(m, dict) and "auc" in m
                                            and _number(m["auc"]) for m in pairs.values()):
    return "no 'validation' pairs with an 'auc'"
  diagnostics = record.get("diagnostics", {})
  fusion = diagnostics.get("fusion_weights") if isinstance(diagnostics, dict) else None
  if not isinstance(diagnostics, dict) or not (
      fusion is None or isinstance(fusion, dict) and all(map(_number, fusion.values()))):
    return "'diagnostics' is not an object of the trainer's diagnostics"
  return None


def read_epochs(path: pathlib.Path, notes: list[str] | None = None) -> list[dict]:
  """The epoch records of a metrics.jsonl by epoch (the last line of an epoch wins).
  A line cut by a kill is skipped; a JSON line that is not an epoch record is
  skipped and noted in `notes`."""
  by_epoch: dict[int, dict] = {}
  try:
    lines = path.read_text().splitlines()
  except FileNotFoundError:
    return []
  except (OSError, ValueError) as e:
    if notes is not None:
      notes.append(f"{path}: does not read ({e}); no epoch records")
    return []
  skipped = []
  for number, line in enumerate(lines, 1):
    line = line.strip()
    if not line:
      continue
    try:
      record = json.loads(line)
    except ValueError:
      continue  # a line cut by a kill
    problem = epoch_problem(record)
    if problem:
      skipped.append(f"line {number}: {problem}")
      continue
    by_epoch[record["epoch"]] = record
  if skipped and notes is not None:
    notes.append(f"{path}: skipped {len(skipped)} line(s) that are not epoch records ("
                 + "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "") + ")")
  return [by_epoch[e] for e in sorted(by_epoch)]


def metrics_problem(metrics) -> str | None:
  """Why a metrics.json is not what the trainer writes (None when it is)."""
  if not isinstance(metrics, dict):
    return "not a JSON object"
  missing = [k for k in ("test", "model", "seed", "domains", "tasks") if k not in metrics]
  if missing:
    return "no " + ", ".join(repr(k) for k in missing)
  test = metrics["test"]
  pairs = test.get("pairs") if isinstance(test, dict) else None
  if not isinstance(pairs, dict) or not _number(test.get("mean_auc")):
    return "'test' is not an object with 'pairs'"
  for pair, m in pairs.items():
    if not (isinstance(m, dict) and all(k in m and _number(m[k]) for k in ("auc", "logloss"))
            and _number(m.get("count"), none=False)):
      return f"test pair {pair!r} has no numbers 'auc', 'logloss' and 'count'"
  if not isinstance(metrics["model"], str) or not _integer(metrics["seed"]):
    return "'model' is not a name or 'seed' not an integer"
  if not _names(metrics["domains"]) or not _names(metrics["tasks"]):
    return "'domains' or 'tasks' is not a list of names"
  variant = metrics.get("variant")
  if variant is not None and not (isinstance(variant, dict) and _names(variant.get("domains"))
                                  and _names(variant.get("tasks"))):
    return "'variant' is not an object with lists 'domains' and 'tasks'"
  for key, check in (("data", lambda v: isinstance(v, str)), ("best_epoch", _integer),
                     ("config_hash", lambda v: isinstance(v, str))):
    if metrics.get(key) is not None and not check(metrics[key]):
      return f"{key!r} is {metrics[key]!r}"
  return None


def checkpoint_config(workdir: pathlib.Path) -> dict | None:
  """The config of the newest readable checkpoint in `workdir` (orbax writes the meta
  as plain JSON: checkpoints/{latest,best}/STEP/meta/metadata), None if there is none."""
  paths = []
  for which in ("latest", "best"):
    folder = workdir / "checkpoints" / which
    if folder.is_dir():
      steps = sorted((int(p.name) for p in folder.iterdir() if p.name.isdigit()), reverse=True)
      paths += [folder / str(step) / "meta" / "metadata" for step in steps]
  for path in paths:
    try:
      meta = json.loads(path.read_text())
    except (OSError, ValueError):
      continue
    if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
      return meta["config"]
  return None


def _config_identity(config: dict) -> dict:
  """model, seed, domains, tasks and config_hash of a config stored in a checkpoint."""
  model, variant = config.get("model"), config.get("variant")
  model = model.get("name") if isinstance(model, dict) else None
  variant = variant if isinstance(variant, dict) else {}
  return {"model": model, "seed": config.get("seed"),
          "domains": list(variant.get("domains") or []),
          "tasks": list(variant.get("tasks") or []),
          "config_hash": run_identity.config_hash(config)}


def _kind(domains: list, tasks: list) -> str:
  """The variant kind of a config's variant lists (empty: all)."""
  return {(0, 0): "mdmt", (1, 1): "single", (1, 0): "mtl",
          (0, 1): "mdl"}.get((min(len(domains), 2), min(len(tasks), 2)), "custom")


def identity_check(metrics: dict, expected: dict, source: str) -> tuple[str | None, bool]:
  """(why `metrics` is not the run `expected` describes, or None; whether their config
  hashes were compared). `expected` has model, seed, domains, tasks (indices or names;
  empty: all) and config_hash, any of them None when unknown."""
  for key in ("model", "seed"):
    if expected.get(key) is not None and metrics[key] != expected[key]:
      return (f"it is another run's: it has {key} {metrics[key]!r}, {source} has "
              f"{expected[key]!r}"), False
  for key in ("domains", "tasks"):
    want = expected.get(key) or []
    if want and len(metrics[key]) != len(want):
      return (f"it is another run's: it has {len(metrics[key])} {key}, {source} keeps "
              f"{len(want)} ({', '.join(map(str, want))})"), False
  theirs, mine = expected.get("config_hash"), metrics.get("config_hash")
  if not theirs or not mine:
    return None, False
  if theirs != mine:
    return (f"it is another run's: its config hash {mine[:12]} is not {theirs[:12]}, the "
            f"one of {source}"), True
  return None, True


def _load_metrics(run: RunInfo, record: dict | None, config: dict | None) -> None:
  """Reads the run's metrics.json and checks it is the run's own: its status becomes
  invalid or rejected (with the reason in `error`) when it is not."""
  metrics, problem = _parse(run.workdir / "metrics.json")
  if problem:
    run.status, run.error = "invalid", problem
    return
  problem = metrics_problem(metrics)
  if problem:
    run.status, run.error = "invalid", f"not a trainer's metrics.json ({problem})"
    return
  checks = []
  if record is not None:
    checks.append((record, "sweep.json"))
  if config is not None:
    checks.append((_config_identity(config), "the run's checkpoints"))
  hashed = False
  for expected, source in checks:
    mismatch, compared = identity_check(metrics, expected, source)
    if mismatch:
      run.status, run.error = "rejected", mismatch
      return
    hashed = hashed or compared
  run.metrics = metrics
  if not hashed:
    checked = " and ".join(source for _, source in checks)
    if not metrics.get("config_hash"):
      why = "its metrics.json has no config hash (an older m3oe_jax wrote it)"
    elif record is not None:
      why = "sweep.json has no config hash (an older m3oe_jax wrote it)"
    else:
      why = "no checkpoint in the folder to check its config hash against"
    run.unverified = why + (f"; its model and seed match {checked}" if checked else "")


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
      _load_metrics(run, r, checkpoint_config(workdir))
    runs.append(run)
  return runs, sweep


def from_run_dir(workdir: pathlib.Path, name: str) -> RunInfo:
  """A run outside a sweep: what it is comes from its metrics.json once that is checked
  against the run's checkpoints, else from the checkpoints' config."""
  config = checkpoint_config(workdir)
  mine = _config_identity(config) if config is not None else {}
  run = RunInfo(name=name, model=mine.get("model") or "unknown",
                kind=_kind(mine["domains"], mine["tasks"]) if mine else "unknown",
                seed=mine.get("seed"), workdir=workdir, status="running",
                domains=mine.get("domains", []), tasks=mine.get("tasks", []))
  if not (workdir / "metrics.json").exists():
    return run
  run.status = "finished"
  _load_metrics(run, None, config)
  if run.metrics is not None:
    metrics = run.metrics
    variant = metrics.get("variant") or {}
    run.model, run.kind, run.seed = metrics["model"], infer_kind(metrics), metrics["seed"]
    run.domains, run.tasks = list(variant.get("domains", [])), list(variant.get("tasks", []))
  return run


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


def problems(runs: list[RunInfo]) -> list[str]:
  """One line per run left out (rejected, invalid) and why, per metrics.jsonl with
  lines skipped, and per reason finished runs could not be verified."""
  lines = [f"{r.workdir / 'metrics.json'}: {r.error}; left out" for r in runs
           if r.status in ("rejected", "invalid")]
  lines += [note for r in runs for note in r.notes]
  unverified: dict[str, list[str]] = {}
  for r in runs:
    if r.status == "finished" and r.unverified:
      unverified.setdefault(r.unverified, []).append(r.name)
  for why, names in unverified.items():
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    lines.append(f"{len(names)} run(s) not verified: {why}; runs: {shown}")
  return lines
