"""Runs a grid of trainings (e.g. the paper's Table 2), one after another, resumably.

  python -m m3oe_jax.sweep --config=configs/sweeps/table2.py:tiny --workdir=DIR
  python -m m3oe_jax.sweep --config=configs/sweeps/table2.py:movielens --workdir=DIR \
      --dry_run --launcher=slurm --launcher_args='--partition=gpu --gpus-per-node=1'

The sweep config (`configs/sweeps/table2.py`) names a dataset config, the rows
(model, kind) and the seeds; `expand` turns it into concrete runs, each with a
stable name `MODEL-KIND/PART/seedSEED` that is also its sub-workdir under DIR.
Locally every run goes through `m3oe_jax.train.train_and_evaluate` in this process:
a run whose `metrics.json` exists is skipped, an interrupted one resumes from its
checkpoints, and one that raises is recorded as failed while the sweep goes on.
`DIR/sweep.json` lists every run (name, model, kind, domains, tasks, seed,
sub-workdir, the equivalent command, the hash of its config, status). `--dry_run`
prints one launcher command per run instead (launch/*.sh), so the grid can be spread
over a cluster; the report (`python -m m3oe_jax.report --workdir=DIR`) reads the
same DIR either way, and leaves out a run whose metrics.json is not its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shlex
import sys
import time
import traceback
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from m3oe_jax import paths, run_identity
from m3oe_jax.cli import load_config_file
from m3oe_jax.config_utils import apply_override
from m3oe_jax.errors import ConfigError

KINDS = ("single", "mtl", "mdl", "mdmt")
LAUNCHERS = ("local", "tpu_vm", "slurm", "single_host_gpu")

_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print one launcher command per run; run "
                             "nothing (sweep.json is still written).")
_LAUNCHER = flags.DEFINE_enum(
    "launcher", "local", LAUNCHERS,
    "With --dry_run: the command to print per run. local: python -m m3oe_jax.train; "
    "tpu_vm: launch/tpu_vm.sh run (TPU_NAME/TPU_ZONE from the environment or "
    "--launcher_args); slurm: launch/slurm_gpu.sh (one single-node job per run); "
    "single_host_gpu: launch/single_host_gpu.sh.")
_LAUNCHER_ARGS = flags.DEFINE_string(
    "launcher_args", "", "Extra launcher options for --dry_run, shell-quoted, e.g. "
    "'--partition=gpu --gpus-per-node=1' (slurm) or '--name=m3oe --zone=us-central2-b'.")


@dataclasses.dataclass
class Run:
  name: str  # also the sub-workdir, relative to the sweep's workdir
  model: str
  kind: str
  domains: tuple[int, ...]  # indices kept (empty: all)
  tasks: tuple[int, ...]
  seed: int
  config_arg: str  # "<dataset path>:<arg>" for the trainer's --config
  overrides: tuple[tuple[str, Any], ...]  # after seed and variant

  @property
  def label(self) -> str:
    return f"{self.model}-{self.kind}"

  def trainer_flags(self) -> list[str]:
    """--config.FIELD=VALUE flags that make the run from its config file."""
    out = [f"--config.seed={self.seed}"]
    if self.domains:
      out.append(f"--config.variant.domains={_format_value(self.domains)}")
    if self.tasks:
      out.append(f"--config.variant.tasks={_format_value(self.tasks)}")
    out += [f"--config.{field}={_format_value(value)}" for field, value in self.overrides]
    return out

  def command(self, workdir: str) -> list[str]:
    return ["python", "-m", "m3oe_jax.train", f"--config={self.config_arg}",
            f"--workdir={workdir}", *self.trainer_flags()]


def _format_value(value) -> str:
  if isinstance(value, (tuple, list)):
    inner = ", ".join(_format_value(v) if isinstance(v, (tuple, list)) else repr(v)
                      for v in value)
    return f"({inner},)" if len(value) == 1 else f"({inner})"
  return str(value)


# ---------------------------------------------------------------------------
# The grid.

def grid_shape(sweep: ml_collections.ConfigDict,
               data_config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(D, T) of the dataset: the sweep's num_domains/num_tasks, else read from the
  dataset config (synthetic: num_domains/num_tasks; MovieLens: age_groups/tasks;
  KuaiRand: tabs or num_auto_tabs/tasks)."""
  data = data_config.data
  num_domains, num_tasks = int(sweep.get("num_domains", 0)), int(sweep.get("num_tasks", 0))
  if not num_domains:
    if "num_domains" in data:
      num_domains = int(data.num_domains)
    elif "age_groups" in data:
      num_domains = len(data.age_groups)
    elif "tabs" in data:
      num_domains = len(data.tabs) or int(data.num_auto_tabs)
  if not num_tasks:
    if "num_tasks" in data:
      num_tasks = int(data.num_tasks)
    elif "tasks" in data:
      num_tasks = len(data.tasks)
  if not num_domains or not num_tasks:
    raise ValueError(f"cannot tell the number of domains and tasks of data "
                     f"{data.get('name')!r}; set num_domains and num_tasks in the sweep config")
  return num_domains, num_tasks


def _join_arg(*parts: str) -> str:
  return ",".join(p for p in parts if p)


def expand(sweep: ml_collections.ConfigDict) -> list[Run]:
  """The concrete runs of a sweep config, in the order of `runs`, then seeds, then
  part (domain, task)."""
  data_config = load_config_file(sweep.dataset.path, sweep.dataset.arg or None)
  num_domains, num_tasks = grid_shape(sweep, data_config)
  seeds = [int(s) for s in sweep.seeds]
  if not seeds:
    raise ValueError("the sweep config has no seeds")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds listed twice: {seeds}")
  common = tuple(tuple(o) for o in sweep.get("overrides", ()))
  runs, labels = [], set()
  for entry in sweep.runs:
    if len(entry) not in (2, 3):
      raise ValueError(f"a runs entry is (model, kind) or (model, kind, overrides), got {entry}")
    model, kind = entry[0], entry[1]
    if kind not in KINDS:
      raise ValueError(f"run {entry}: kind {kind!r} is not one of {KINDS}")
    if f"{model}-{kind}" in labels:
      raise ValueError(f"run {model}-{kind} is listed twice")
    labels.add(f"{model}-{kind}")
    own = tuple(tuple(o) for o in (entry[2] if len(entry) == 3 else ()))
    if kind == "single":
      parts = [((d,), (t,), f"d{d}t{t}") for d in range(num_domains) for t in range(num_tasks)]
    elif kind == "mtl":
      parts = [((d,), (), f"d{d}") for d in range(num_domains)]
    elif kind == "mdl":
      parts = [((), (t,), f"t{t}") for t in range(num_tasks)]
    else:
      parts = [((), (), "all")]
    arg = _join_arg(sweep.dataset.arg, f"model={model}")
    config_arg = f"{sweep.dataset.path}:{arg}"
    for seed in seeds:
      for domains, tasks, part in parts:
        runs.append(Run(name=f"{model}-{kind}/{part}/seed{seed}", model=model, kind=kind,
                        domains=domains, tasks=tasks, seed=seed, config_arg=config_arg,
                        overrides=common + own))
  return runs


def run_config(sweep: ml_collections.ConfigDict, run: Run) -> ml_collections.ConfigDict:
  """The trainer config of one run: what `run.command()` would build."""
  config = load_config_file(sweep.dataset.path, _join_arg(sweep.dataset.arg,
                                                          f"model={run.model}"))
  apply_override(config, "seed", run.seed)
  apply_override(config, "variant.domains", tuple(run.domains))
  apply_override(config, "variant.tasks", tuple(run.tasks))
  for field, value in run.overrides:
    apply_override(config, field, value)
  return config


def check_configs(sweep: ml_collections.ConfigDict, runs: list[Run]) -> None:
  """Builds one config per (model, kind) row up front, so that a bad override or
  dataset argument stops the sweep with one message instead of failing every run."""
  seen = set()
  for run in runs:
    if run.label not in seen:
      seen.add(run.label)
      try:
        run_config(sweep, run)
      except (KeyError, ValueError, TypeError, SyntaxError) as e:
        raise ValueError(f"run {run.name}: {e}") from e


# ---------------------------------------------------------------------------
# Launcher commands (--dry_run).

def launcher_command(run: Run, workdir: str, launcher: str,
                     extra: list[str] | None = None) -> list[str]:
  """The command that runs `run` with one of launch/*.sh (their real flags), or the
  trainer itself for `local`."""
  extra = list(extra or [])
  config_flag, workdir_flag = f"--config={run.config_arg}", f"--workdir={workdir}"
  if launcher == "local":
    return run.command(workdir)
  if launcher == "single_host_gpu":
    return ["launch/single_host_gpu.sh", *extra, config_flag, workdir_flag, "--",
            *run.trainer_flags()]
  if launcher == "slurm":
    job = "m3oe-" + run.name.replace("/", "-")
    return ["launch/slurm_gpu.sh", "--nodes=1", f"--job-name={job}", *extra, config_flag,
            workdir_flag, "--", *run.trainer_flags()]
  if launcher == "tpu_vm":
    return ["launch/tpu_vm.sh", "run", *extra, config_flag, workdir_flag, "--",
            *run.trainer_flags()]
  raise ValueError(f"unknown launcher {launcher!r}; expected one of {LAUNCHERS}")


# ---------------------------------------------------------------------------
# The sweep record.

def _write_json(path: pathlib.Path, value) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=2))
  os.replace(tmp, path)


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def run_record(run: Run, workdir: pathlib.Path, config_hash: str | None = None) -> dict:
  sub = workdir / run.name
  return {"name": run.name, "label": run.label, "model": run.model, "kind": run.kind,
          "domains": list(run.domains), "tasks": list(run.tasks), "seed": run.seed,
          "workdir": run.name, "config": run.config_arg,
          "overrides": [[f, v] for f, v in run.overrides], "config_hash": config_hash,
          "command": shlex.join(run.command(str(sub))),
          "status": "finished" if (sub / "metrics.json").exists() else "pending"}


class SweepRecord:
  """DIR/sweep.json: the sweep's config and one entry per run, rewritten atomically
  after every change. Statuses: pending, running, finished, failed, interrupted.
  A run's config_hash (run_identity) is the one of the config it is launched with;
  a finished run keeps the one recorded when it ran."""

  def __init__(self, workdir: pathlib.Path, config_flag: str,
               sweep: ml_collections.ConfigDict, runs: list[Run]):
    self.path = workdir / "sweep.json"
    previous = {r["name"]: r for r in (_read_json(self.path) or {}).get("runs", [])}
    self.runs = []
    for run in runs:
      record = run_record(run, workdir, run_identity.config_hash(run_config(sweep, run)))
      old = previous.get(run.name)
      if record["status"] == "finished" and old and old.get("config_hash"):
        record["config_hash"] = old["config_hash"]
      if record["status"] != "finished" and old and old.get("status") in ("failed",
                                                                          "interrupted"):
        record.update({k: old[k] for k in ("status", "error") if k in old})
      self.runs.append(record)
    self.data = {"config": config_flag, "sweep": sweep.to_dict(),
                 "num_runs": len(runs), "runs": self.runs}
    self.write()

  def update(self, index: int, **fields) -> None:
    self.runs[index].update(fields)
    if fields.get("status") in ("finished", "running"):
      self.runs[index].pop("error", None)
    self.write()

  def write(self) -> None:
    self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write_json(self.path, self.data)


def _hms(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _auc_text(value) -> str:
  return "n/a" if value is None else f"{value:.4f}"


def run_sweep(sweep: ml_collections.ConfigDict, workdir: str, config_flag: str = "",
              train_fn=None, out=None) -> dict:
  """Runs every run of the grid in this process, one after another.

  Returns {"finished": n, "failed": n, "skipped": n, ...}. `train_fn(config, subdir)`
  defaults to `m3oe_jax.train.train_and_evaluate`.
  """
  out = out or sys.stdout
  if train_fn is None:
    from m3oe_jax.train import train_and_evaluate
    train_fn = train_and_evaluate
  root = _local_root(workdir)
  runs = expand(sweep)
  check_configs(sweep, runs)
  root.mkdir(parents=True, exist_ok=True)
  record = SweepRecord(root, config_flag, sweep, runs)
  counts = {"finished": 0, "skipped": 0, "failed": 0}
  durations: list[float] = []
  width = max(len(r.name) for r in runs)

  def say(text):
    print(text, file=out, flush=True)

  say(f"sweep {sweep.get('name', '')}: {len(runs)} runs into {root}")
  for index, run in enumerate(runs):
    sub = root / run.name
    done = _read_json(sub / "metrics.json")
    head = f"[{index + 1}/{len(runs)}] {run.name:<{width}}"
    if done is not None:
      counts["skipped"] += 1
      record.update(index, status="finished")
      say(f"{head}  skipped (done)  test mean AUC {_auc_text(done['test'].get('mean_auc'))}")
      continue
    record.update(index, status="running")
    start = time.perf_counter()
    try:
      result = train_fn(run_config(sweep, run), str(sub))
    except KeyboardInterrupt:
      record.update(index, status="interrupted", error="KeyboardInterrupt")
      say(f"{head}  interrupted; rerun the same command to resume")
      raise
    except Exception as e:  # pylint: disable=broad-except
      seconds = time.perf_counter() - start
      counts["failed"] += 1
      message = f"{type(e).__name__}: {e}"
      record.update(index, status="failed", error=message,
                    traceback=traceback.format_exc(limit=20), seconds=round(seconds, 1))
      say(f"{head}  FAILED after {seconds:.0f}s: {message.splitlines()[0] if message else ''}")
      continue
    seconds = time.perf_counter() - start
    if isinstance(result, dict) and result.get("preempted"):
      record.update(index, status="interrupted", error="preempted (SIGTERM)")
      say(f"{head}  preempted at step {result.get('step')}; rerun the same command to resume")
      counts["preempted"] = 1
      break
    durations.append(seconds)
    counts["finished"] += 1
    mean_auc = (result or {}).get("test", {}).get("mean_auc")
    record.update(index, status="finished", seconds=round(seconds, 1), test_mean_auc=mean_auc)
    left = sum(1 for r in runs[index + 1:] if not (root / r.name / "metrics.json").exists())
    eta = sum(durations) / len(durations) * left
    say(f"{head}  finished  test mean AUC {_auc_text(mean_auc)}  {seconds:.1f}s  "
        f"| {left} runs left, ETA {_hms(eta)}")
  say(f"sweep done: {counts['finished']} trained, {counts['skipped']} already done, "
      f"{counts['failed']} failed; {record.path}")
  return counts


def _local_root(workdir: str) -> pathlib.Path:
  if paths.is_url(workdir):
    raise ConfigError(f"--workdir={workdir}: a sweep keeps its runs and its record in a local "
                      "or network folder; train single runs in gs:// workdirs instead")
  return pathlib.Path(paths.resolve(workdir))


def dry_run(sweep: ml_collections.ConfigDict, workdir: str, launcher: str,
            launcher_args: str = "", config_flag: str = "", out=None) -> list[list[str]]:
  """Prints one command per run (and writes sweep.json); returns the commands."""
  out = out or sys.stdout
  root = _local_root(workdir)
  runs = expand(sweep)
  check_configs(sweep, runs)
  root.mkdir(parents=True, exist_ok=True)
  SweepRecord(root, config_flag, sweep, runs)
  extra = shlex.split(launcher_args)
  commands = [launcher_command(r, str(root / r.name), launcher, extra) for r in runs]
  for command in commands:
    print(shlex.join(command), file=out)
  out.flush()
  return commands


def main(argv):
  from m3oe_jax import cli, train  # train defines --config, which holds the sweep config
  cli.start(argv)
  if cli.WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  sweep = train._CONFIG.value  # pylint: disable=protected-access
  if sweep is None:
    raise app.UsageError("--config=configs/sweeps/NAME.py[:ARG] is required")
  config_flag = config_flags.get_config_filename(flags.FLAGS["config"])
  try:
    if _DRY_RUN.value:
      dry_run(sweep, cli.WORKDIR.value, _LAUNCHER.value, _LAUNCHER_ARGS.value, config_flag)
      return
    if _LAUNCHER.value != "local":
      raise app.UsageError("--launcher is for --dry_run; without it the sweep runs locally")
    counts = run_sweep(sweep, cli.WORKDIR.value, config_flag)
  except (FileNotFoundError, KeyError, ValueError) as e:
    raise ConfigError(str(e)) from None  # cli.run prints it as one line, exit status 2
  if counts.get("failed"):
    sys.exit(1)


if __name__ == "__main__":
  from m3oe_jax import cli, train as _train  # noqa: F401  (defines --config and --workdir)
  cli.run(main)
