"""The authors' PyTorch code and m3oe_jax on the same data, their numbers side by side.

  python reproduce/side_by_side.py --data=DIR --workdir=DIR [--side=both] [--seeds=2022,2023,2024]
      [--rows=m3oe-mdmt,mmoe-mdmt,ple-mdmt,star-mdl] [--epochs=50]
      [--authors_m3oe=CHECKOUT] [--authors_mdmt=CHECKOUT] [--torch_python=PYTHON]

--data is the folder reproduce/ml100k.py writes (ml-100k-as-1m.zip, ml-1m.csv), or any folder
holding the authors' merged ml-1m.csv and the same ratings, in the same order, as an ML-1M
archive named ml-1m.zip (checked row by row before anything runs). Each flag can
also come from the environment: SBS_DATA, SBS_WORKDIR, SBS_SIDE, SBS_SEEDS, SBS_ROWS,
SBS_EPOCHS, SBS_AUTHORS_M3OE, SBS_AUTHORS_MDMT, SBS_TORCH_PYTHON (a flag wins).

The authors' side runs their scripts unchanged, one subprocess per run, with the torch Python:
M3oE is `examples/run_movielens.py` of Applied-Machine-Learning-Lab/M3oE, the baselines
`examples/run_movielens_rank_multi_domain.py` of zhangzj2114/mdmt (their `--model_name`,
`--task click|like` for a -MDL run, `--domain D` for a -MTL run), each with its own defaults
(the paper's settings) except `--seed`, `--epoch`, `--dataset_path` and `--device cpu`. Each
run has its own scratch folder (their scripts write `output/*.csv` and model files relative to
the current folder) with PYTHONPATH set to the checkout. The per-(domain, task) test AUC and
logloss are read from what the script prints (M3oE: full precision) or from the CSV row it
writes (the baselines print no per-cell line; their CSV has 4 decimals). A finished run is not
run again, and the table holds every finished run in --workdir on the same data and epochs
(seeds or rows added by an earlier call included), as our side's sweep folder does.

Our side runs `python -m m3oe_jax.sweep --config=configs/sweeps/table2.py:movielens,
data=reference_split,...` on the zip (the file-order 80/10/10 slice of the authors' code; the
zip's ratings are in temporal order, so this is also the temporal split), with the vocabulary
the authors' code uses (every row's values, `--vocabulary=all_rows`) unless told otherwise.

Into --workdir: `authors/ROW/PART/seedS/` (each run's scratch folder, log and `result.json`),
`ours/` (the sweep), `reference.json` (the authors' numbers, m3oe_jax/report/reference.py) and
`side_by_side.md` (per row the mean test AUC over the six (domain, task) cells of each side,
mean ± std over seeds, the difference and its noise; per-cell tables; wall times).
`python -m m3oe_jax.report --workdir=DIR/ours --reference=DIR/reference.json` gives the full
report with the same comparison.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: this checkout's m3oe_jax
  sys.path.insert(0, str(REPO))

PROG = "reproduce/side_by_side.py"
DEFAULT_SEEDS = (2022, 2023, 2024)
DEFAULT_ROWS = ("m3oe-mdmt", "mmoe-mdmt", "ple-mdmt", "star-mdl")
PAPER_EPOCHS = 50
SIDES = ("authors", "ours", "both")
VOCABULARIES = ("all_rows", "train")
# The ratings as an ML-1M archive: reproduce/ml100k.py's, or the official one.
ZIP_NAMES = ("ml-100k-as-1m.zip", "ml-1m.zip")
CSV_NAME = "ml-1m.csv"
LABEL_PATTERN = r"[a-z0-9_]+-(single|mtl|mdl|mdmt)"
# MovieLens as configs/movielens.py names its domains and tasks (the authors' order).
DOMAINS = ("age_1_18", "age_25", "age_35_45_50_56")
TASKS = ("click", "like")
M3OE_SCRIPT = "examples/run_movielens.py"
MDMT_SCRIPT = "examples/run_movielens_rank_multi_domain.py"
TORCH_CHECK = "import torch, pandas, sklearn, tqdm"


class InputError(Exception):
  """Bad input: one line naming the flag or file."""


# ---------------------------------------------------------------------------
# The authors' runs of each row.

@dataclasses.dataclass(frozen=True)
class AuthorsRun:
  """One run of an authors' script: `args` after their defaults; `domain`/`task`: the one
  domain (--domain) or task (--task) it trains, None for all."""
  repo: str  # "m3oe" or "mdmt"
  script: str
  args: tuple[str, ...]
  domain: int | None = None
  task: int | None = None

  @property
  def part(self) -> str:
    if self.domain is None and self.task is None:
      return "all"
    return ("" if self.domain is None else f"d{self.domain}") + (
        "" if self.task is None else f"t{self.task}")

  def cell(self, d: int, t: int) -> str:
    """The "domain/task" name of the script's local cell (d, t)."""
    domain = d if self.domain is None else self.domain
    task = t if self.task is None else self.task
    return f"{DOMAINS[domain]}/{TASKS[task]}"

  def local_cells(self) -> list[tuple[int, int]]:
    domains = range(len(DOMAINS)) if self.domain is None else range(1)
    tasks = range(len(TASKS)) if self.task is None else range(1)
    return [(d, t) for d in domains for t in tasks]


def _mdmt(model: str, domain: int | None = None, task: int | None = None) -> AuthorsRun:
  args = ["--model_name", model]
  if domain is not None:
    args += ["--domain", str(domain)]
  if task is not None:
    args += ["--task", TASKS[task]]
  return AuthorsRun("mdmt", MDMT_SCRIPT, tuple(args), domain, task)


def authors_runs(label: str) -> list[AuthorsRun]:
  """The authors' runs behind a row of Table 2 (by this project's label MODEL-KIND)."""
  model, _, kind = label.rpartition("-")
  if label == "m3oe-mdmt":
    return [AuthorsRun("m3oe", M3OE_SCRIPT, ())]
  # This project's model name -> their --model_name (mlp: their Mlp_7_Layer).
  theirs = {"mlp": "mlp_7", "mmoe": "mmoe", "ple": "ple", "star": "star"}.get(model)
  if theirs is None or (model == "star" and kind != "mdl") or (model == "mlp"
                                                               and kind != "single"):
    raise InputError(f"--rows: no authors' code runs {label!r}; they run "
                     + ", ".join(AUTHORS_ROWS))
  if kind == "mdmt":
    return [_mdmt(theirs)]
  if kind == "mdl":
    return [_mdmt(theirs, task=t) for t in range(len(TASKS))]
  if kind == "mtl":
    return [_mdmt(theirs, domain=d) for d in range(len(DOMAINS))]
  return [_mdmt(theirs, domain=d, task=t) for d in range(len(DOMAINS)) for t in range(len(TASKS))]


AUTHORS_ROWS = ("m3oe-mdmt", "mmoe-mdmt", "ple-mdmt", "star-mdl", "mmoe-mdl", "ple-mdl",
                "mmoe-mtl", "ple-mtl", "mlp-single")


# ---------------------------------------------------------------------------
# What their scripts write.

CELL_LINE = re.compile(r"^domain: (\d+), task: (\d+), auc: (\S+) \| test logloss: (\S+)\s*$")
TOTAL_LINE = re.compile(r"^test auc: (\S+) \| test logloss: (\S+)\s*$")
EPOCH_LINE = re.compile(r"^epoch: (\d+) validation: auc: (\S+) log loss: (\S+)\s*$")
EARLY_STOP = re.compile(r"^validation: best auc: (\S+)\s*$")
CSV_CELL = re.compile(r"^(auc|log)_d(\d+)t(\d+)$")


def _float(text: str, where: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise InputError(f"{where}: {text!r} is not a number") from None


def parse_stdout(text: str, where: str = "stdout") -> dict:
  """What a script printed: {"cells": {(d, t): (auc, logloss)} (M3oE prints them; the
  baselines do not), "total": (auc, logloss) pooled over all cells or None, "epochs": the
  epochs validated, "best_validation_auc": when it stopped early, else None}."""
  cells, total, epochs, best = {}, None, 0, None
  for line in text.splitlines():
    if m := CELL_LINE.match(line):
      cells[(int(m[1]), int(m[2]))] = (_float(m[3], where), _float(m[4], where))
    elif m := TOTAL_LINE.match(line):
      total = (_float(m[1], where), _float(m[2], where))
    elif m := EPOCH_LINE.match(line):
      epochs = max(epochs, int(m[1]) + 1)
    elif m := EARLY_STOP.match(line):
      best = _float(m[1], where)
  return {"cells": cells, "total": total, "epochs": epochs, "best_validation_auc": best}


def parse_output_csv(text: str, seed: int, where: str) -> dict[tuple[int, int], tuple]:
  """{(d, t): (auc, logloss)} of the last row for `seed` of an `output/*.csv` their scripts
  append to (header: auc_d0t0.., log_d0t0.., auc, log, seed, ...; values rounded to 4
  decimals)."""
  import csv  # pylint: disable=import-outside-toplevel
  rows = list(csv.reader(text.splitlines()))
  if not rows or "seed" not in rows[0]:
    raise InputError(f"{where}: no header with a 'seed' column")
  header = rows[0]
  mine = [r for r in rows[1:] if len(r) == len(header) and r[header.index("seed")] == str(seed)]
  if not mine:
    raise InputError(f"{where}: no row for seed {seed}")
  row = dict(zip(header, mine[-1]))
  cells: dict[tuple[int, int], list] = {}
  for name, value in row.items():
    if m := CSV_CELL.match(name):
      cells.setdefault((int(m[2]), int(m[3])), [None, None])[m[1] == "log"] = _float(value, where)
  if not cells or any(None in v for v in cells.values()):
    raise InputError(f"{where}: no auc_dDtT and log_dDtT columns for every cell")
  return {k: tuple(v) for k, v in cells.items()}


def run_result(run: AuthorsRun, stdout: str, csv_text: str | None, seed: int,
               where: str) -> dict:
  """A finished run's cells by name ({"domain/task": {"auc", "logloss"}}) and what else it
  printed. Cells come from the printed lines where the script prints them (full precision),
  else from its CSV row; where both exist they must agree to the CSV's 4 decimals."""
  printed = parse_stdout(stdout, where)
  from_csv = parse_output_csv(csv_text, seed, where) if csv_text is not None else {}
  local = printed["cells"] or from_csv
  if not local:
    raise InputError(f"{where}: the script printed no per-cell results and wrote no CSV")
  for key, (auc, loss) in from_csv.items():
    if key in printed["cells"]:
      p_auc, p_loss = printed["cells"][key]
      if abs(p_auc - auc) > 6e-5 or abs(p_loss - loss) > 6e-5:
        raise InputError(f"{where}: the printed cell d{key[0]}t{key[1]} ({p_auc}, {p_loss}) is "
                         f"not the CSV's ({auc}, {loss})")
  wanted = run.local_cells()
  missing = [f"d{d}t{t}" for d, t in wanted if (d, t) not in local]
  if missing:
    raise InputError(f"{where}: no result for cells {', '.join(missing)}")
  return {
      "cells": {run.cell(d, t): {"auc": local[(d, t)][0], "logloss": local[(d, t)][1]}
                for d, t in wanted},
      "precision": "printed (full)" if printed["cells"] else "CSV (4 decimals)",
      "pooled": (None if printed["total"] is None
                 else {"auc": printed["total"][0], "logloss": printed["total"][1]}),
      "epochs": printed["epochs"],
      "early_stopped": printed["best_validation_auc"] is not None,
  }


# ---------------------------------------------------------------------------
# Checks and provenance.

def check_inputs(args) -> dict:
  """The data files and their sha256; an InputError naming the flag otherwise."""
  data = pathlib.Path(args.data)
  if not data.is_dir():
    raise InputError(f"--data={args.data}: no such folder (make it with reproduce/ml100k.py)")
  if not (data / CSV_NAME).is_file():
    raise InputError(f"--data={args.data}: no {CSV_NAME} in it (make it with reproduce/ml100k.py)")
  zips = [name for name in ZIP_NAMES if (data / name).is_file()]
  if len(zips) != 1:
    raise InputError(f"--data={args.data}: " + (
        f"no {' or '.join(ZIP_NAMES)} in it" if not zips else f"holds both {' and '.join(zips)}; "
        "keep the one with the ratings of ml-1m.csv") + " (make it with reproduce/ml100k.py)")
  archive = data / zips[0]
  check_same_ratings(archive, data / CSV_NAME, args.data)
  described = data / "ml100k.json"
  description = {}
  if described.is_file():
    try:
      description = json.loads(described.read_text())
    except ValueError:
      description = {}
  return {"folder": str(data.resolve()), "zip": str(archive.resolve()),
          "zip_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
          "csv": str((data / CSV_NAME).resolve()),
          "csv_sha256": hashlib.sha256((data / CSV_NAME).read_bytes()).hexdigest(),
          "what": description.get("what"),
          "ratings": description.get("ratings"), "users": description.get("users"),
          "movies": description.get("movies"), "source": description.get("source")}


def check_same_ratings(archive: pathlib.Path, csv_path: pathlib.Path, flag: str) -> None:
  """Both sides split by file order, so the archive's ratings.dat and the authors' CSV must
  hold the same (user, movie, rating, timestamp) rows in the same order."""
  def refuse(why: str):
    raise InputError(f"--data={flag}: {why}; both sides split the rows in file order, so "
                     f"write both files from one source (reproduce/ml100k.py does)")

  try:
    with zipfile.ZipFile(archive) as z:
      member = next((n for n in z.namelist() if n.endswith("ratings.dat")), None)
      if member is None:
        refuse(f"{archive.name} has no ratings.dat")
      ratings = z.read(member).decode("latin-1").splitlines()
  except (OSError, zipfile.BadZipFile) as e:
    refuse(f"{archive.name} does not read as a zip archive ({e})")
  with open(csv_path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    wanted = ("user_id", "movie_id", "rating", "timestamp")
    missing = [c for c in wanted if c not in (reader.fieldnames or [])]
    if missing:
      refuse(f"{CSV_NAME} has no column {', '.join(missing)}")
    number = -1
    for number, row in enumerate(reader):
      if number >= len(ratings):
        refuse(f"{CSV_NAME} has more rows than {archive.name}'s ratings.dat "
               f"({len(ratings)})")
      theirs = tuple(row[c] for c in wanted)
      ours = tuple(ratings[number].split("::"))
      if theirs != ours:
        refuse(f"row {number + 1} of {CSV_NAME} is {'::'.join(theirs)} but line {number + 1} of "
               f"{archive.name}'s ratings.dat is {ratings[number]}")
  if number + 1 != len(ratings):
    refuse(f"{CSV_NAME} has {number + 1} rows, {archive.name}'s ratings.dat {len(ratings)}")


def checkout_info(path: str, flag: str, script: str) -> dict:
  """The checkout's commit and which of the commit's files differ in the working tree (the
  files themselves are compared with the commit's, whatever git's index says); an
  InputError when the script is not there."""
  root = pathlib.Path(path)
  if not (root / script).is_file():
    raise InputError(f"{flag}={path}: no {script} in it (a checkout of the authors' repository)")

  def git(*command, stdin=None):
    try:
      out = subprocess.run(["git", "-C", str(root), *command], capture_output=True, text=True,
                           input=stdin, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
      return None
    return out.stdout if out.returncode == 0 else None

  commit = (git("rev-parse", "HEAD") or "").strip() or None
  changed = missing = None
  listing = git("ls-tree", "-r", "-z", "HEAD") if commit else None
  if listing is not None:
    blobs = {}
    for entry in filter(None, listing.split("\0")):
      meta, _, name = entry.partition("\t")
      if meta.split()[1] == "blob":
        blobs[name] = meta.split()[2]
    present = [n for n in blobs if (root / n).is_file()]
    hashes = git("hash-object", "--no-filters", "--stdin-paths",
                 stdin="".join(n + "\n" for n in present)) if present else ""
    if hashes is not None:
      now = dict(zip(present, hashes.split()))
      changed = sorted(n for n in present if now.get(n) != blobs[n])
      missing = sorted(set(blobs) - set(present))
  return {"path": str(root.resolve()), "commit": commit,
          "modified": None if changed is None else bool(changed),
          "changed_files": changed,
          # files of the commit not in the working tree (a partial copy: caches, images)
          "missing_files": missing if changed is not None else None}


def check_torch_python(python: str) -> str:
  """The torch Python's versions; an InputError naming --torch_python otherwise."""
  command = [python, "-c", TORCH_CHECK + "; print(torch.__version__, pandas.__version__, "
             "sklearn.__version__)"]
  try:
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
  except OSError as e:
    raise InputError(f"--torch_python={python}: cannot run it ({e.strerror or e})") from None
  except subprocess.TimeoutExpired:
    raise InputError(f"--torch_python={python}: `{TORCH_CHECK}` took over 5 minutes") from None
  if out.returncode != 0:
    last = (out.stderr.strip().splitlines() or ["failed"])[-1]
    raise InputError(f"--torch_python={python}: cannot `{TORCH_CHECK}` ({last})")
  torch_v, pandas_v, sklearn_v = (out.stdout.split() + ["?"] * 3)[:3]
  return f"torch {torch_v}, pandas {pandas_v}, scikit-learn {sklearn_v}"


# ---------------------------------------------------------------------------
# Running.

def say(text: str) -> None:
  print(text, flush=True)


def run_authors(args, data: dict, checkouts: dict) -> None:
  """Runs (or reuses) the authors' runs of --rows x --seeds."""
  for label in args.rows:
    for seed in args.seeds:
      for run in authors_runs(label):
        authors_run(args, data, checkouts, label, run, seed)


def finished_rows(args, data: dict) -> dict:
  """The reference rows of every finished authors' run in --workdir on this data with these
  epochs: the rows of --rows first, then any other row found; per row, each seed whose
  runs are all finished. Seeds and rows added by earlier calls join the table."""
  root = pathlib.Path(args.workdir) / "authors"
  found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
  labels = list(args.rows) + [x for x in found if x not in args.rows and
                              re.fullmatch(LABEL_PATTERN, x)]
  rows = {}
  for label in labels:
    try:
      runs = authors_runs(label)
    except InputError:  # a folder no authors' row makes
      continue
    seed_dirs = {p.name for run in runs for p in (root / label / run.part).glob("seed*")}
    seeds = {}
    for seed in sorted(int(name[4:]) for name in seed_dirs if name[4:].isdigit()):
      results = [_finished(root / label / run.part / f"seed{seed}", data, args.epochs)
                 for run in runs]
      if all(results):
        seeds[seed] = {"cells": {k: v for r in results for k, v in r["cells"].items()},
                       "runs": [{k: r.get(k) for k in ("part", "command", "seconds", "epochs",
                                                        "early_stopped", "precision", "pooled")}
                                for r in results]}
    if seeds:
      rows[label] = {"seeds": seeds}
  return rows


def _finished(folder: pathlib.Path, data: dict, epochs: int) -> dict | None:
  """A run's result.json when it is of this data and these epochs, else None."""
  try:
    done = json.loads((folder / "result.json").read_text())
    command = shlex.split(done["command"])
    ran_epochs = int(command[command.index("--epoch") + 1])
  except (OSError, ValueError, KeyError, IndexError):
    return None
  if done.get("data_sha256") != data["zip_sha256"] or ran_epochs != epochs:
    return None
  return done


def authors_run(args, data: dict, checkouts: dict, label: str, run: AuthorsRun,
                seed: int) -> dict:
  folder = pathlib.Path(args.workdir) / "authors" / label / run.part / f"seed{seed}"
  checkout = checkouts[run.repo]["path"]
  command = [args.torch_python, str(pathlib.Path(checkout) / run.script),
             "--dataset_path", data["folder"], "--device", "cpu", "--seed", str(seed),
             "--epoch", str(args.epochs), *run.args]
  result_file = folder / "result.json"
  if result_file.is_file():
    try:
      done = json.loads(result_file.read_text())
    except ValueError:
      done = None
    if done and done.get("command") == shlex.join(command) and done.get("data_sha256") == \
        data["zip_sha256"]:
      say(f"authors {label} {run.part} seed {seed}: done before ({done['seconds']:.0f}s)")
      return done
  folder.mkdir(parents=True, exist_ok=True)
  for sub in ("output", "model_para"):  # their scripts write here, relative to the cwd
    (folder / sub).mkdir(exist_ok=True)
  for old in (folder / "output").glob("*.csv"):
    old.unlink()  # their scripts append
  env = dict(os.environ)
  env["PYTHONPATH"] = checkout + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  say(f"authors {label} {run.part} seed {seed}: {shlex.join(command)}")
  start = time.perf_counter()
  with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
    proc = subprocess.run(command, cwd=folder, env=env, stdout=out, stderr=err, check=False)
  seconds = time.perf_counter() - start
  where = f"{folder}/stdout.txt"
  if proc.returncode != 0:
    tail = (folder / "stderr.txt").read_text(errors="replace").strip().splitlines()[-1:]
    raise RunError(f"the authors' {run.script} ({label} {run.part} seed {seed}) failed with "
                   f"exit status {proc.returncode} after {seconds:.0f}s: "
                   f"{tail[0] if tail else ''} (log: {folder})")
  csvs = sorted((folder / "output").glob("*.csv"))
  result = run_result(run, (folder / "stdout.txt").read_text(errors="replace"),
                      csvs[-1].read_text() if csvs else None, seed, where)
  result.update(part=run.part, command=shlex.join(command), seconds=round(seconds, 1),
                data_sha256=data["zip_sha256"])
  result_file.write_text(json.dumps(result, indent=2))
  say(f"authors {label} {run.part} seed {seed}: {seconds:.0f}s, {result['epochs']} epochs, "
      "AUC " + " ".join(f"{c['auc']:.4f}" for c in result["cells"].values()))
  return result


class RunError(Exception):
  """A run that failed: the message names its log."""


def sweep_command(args, data: dict) -> list[str]:
  """`python -m m3oe_jax.sweep` on the zip, the file-order split, our row labels and seeds."""
  overrides = (("data.archive", data["zip"]), ("data.archive_checksum", "sha256:"
                                                + data["zip_sha256"]),
               ("data.download", False), ("data.vocabulary", args.vocabulary),
               ("data.data_dir", str(pathlib.Path(args.workdir).resolve() / "ours_data")),
               ("num_epochs", args.epochs))
  seeds = "+".join(str(s) for s in args.seeds)  # one seed: its number (table2.py: > 100)
  arg = f"movielens,data=reference_split,seeds={seeds},runs={'+'.join(args.rows)}"
  return [sys.executable, "-m", "m3oe_jax.sweep",
          f"--config={REPO / 'm3oe_jax' / 'configs' / 'sweeps' / 'table2.py'}:{arg}",
          f"--config.overrides={overrides!r}",
          f"--workdir={pathlib.Path(args.workdir).resolve() / 'ours'}"]


def run_ours(args, data: dict) -> float:
  command = sweep_command(args, data)
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                   else "")
  say(f"ours: {shlex.join(command)}")
  start = time.perf_counter()
  proc = subprocess.run(command, cwd=REPO, env=env, check=False)
  seconds = time.perf_counter() - start
  if proc.returncode != 0:
    raise RunError(f"m3oe_jax.sweep failed with exit status {proc.returncode} after "
                   f"{seconds:.0f}s (its runs: {pathlib.Path(args.workdir) / 'ours'})")
  return seconds


# ---------------------------------------------------------------------------
# The outputs.

def write_reference(args, data: dict, checkouts: dict, rows: dict, versions: str) -> pathlib.Path:
  from m3oe_jax.report import reference  # pylint: disable=import-outside-toplevel
  value = reference.document(
      list(DOMAINS), list(TASKS), rows, name="authors' code",
      description=f"the authors' PyTorch code, run unchanged on {CSV_NAME} of {args.data}, "
                  f"{args.epochs} epochs, on CPU; seeds: " + "; ".join(
                      f"{label} {', '.join(map(str, row['seeds']))}"
                      for label, row in rows.items()),
      source={"commits": {"M3oE": checkouts["m3oe"]["commit"],
                          "mdmt": checkouts["mdmt"]["commit"]},
              "checkouts": checkouts, "torch": versions,
              "scripts": {"m3oe": M3OE_SCRIPT, "mdmt": MDMT_SCRIPT},
              "settings": "their defaults (the paper's) except --seed, --epoch, "
                          "--dataset_path and --device cpu"},
      data={"description": data_description(data), **data})
  path = pathlib.Path(args.workdir) / "reference.json"
  path.write_text(json.dumps(value, indent=2) + "\n")
  return path


def data_description(data: dict) -> str:
  """What the data is: reproduce/ml100k.py's description when it wrote it."""
  what = data.get("what") or f"the ratings of {pathlib.Path(data['zip']).name}"
  count = f"{data['ratings']} ratings, " if data.get("ratings") else ""
  return f"{what} ({count}file-order 80/10/10 split)"


def _times(args, rows: dict | None, ours_dir: pathlib.Path) -> list[str]:
  """Wall seconds per run, mean over the seeds, of each side."""
  sweep = {}
  try:
    sweep = json.loads((ours_dir / "sweep.json").read_text())
  except (OSError, ValueError):
    pass
  lines = ["| row | authors' code: s per run (runs) | m3oe_jax: s per run (runs) |",
           "|---|---|---|"]
  for label in args.rows:
    theirs = [r["seconds"] for s in ((rows or {}).get(label, {}).get("seeds", {}).values())
              for r in s.get("runs", [])]
    ours = [r["seconds"] for r in sweep.get("runs", []) if r.get("label") == label
            and r.get("seconds") is not None]
    def text(values):
      return f"{sum(values) / len(values):.0f} ({len(values)})" if values else "n/a"
    lines.append(f"| {label} | {text(theirs)} | {text(ours)} |")
  return lines


def write_markdown(args, data: dict, reference_path: pathlib.Path) -> pathlib.Path:
  """side_by_side.md from reference.json and our sweep's runs."""
  # pylint: disable-next=import-outside-toplevel
  from m3oe_jax.report import collect, compare, reference, tables
  ref = reference.load(reference_path)
  ours_dir = pathlib.Path(args.workdir) / "ours"
  try:
    runs, _ = collect.collect([ours_dir])
  except collect.ReportError:
    runs = []
  table = tables.build_table(runs)
  comparisons = compare.compare(table, ref)
  raw = json.loads(reference_path.read_text())
  rows = {label: row for label, row in raw["rows"].items()}
  lines = [
      "# The authors' code and m3oe_jax on the same data", "",
      f"Data: {data['zip']} (sha256:{data['zip_sha256']}) and {data['csv']}: "
      f"{ref.data.get('description', '')}.",
      f"Authors' code: M3oE {ref.source.get('commits', {}).get('M3oE')}, mdmt "
      f"{ref.source.get('commits', {}).get('mdmt')} ({ref.source.get('torch', '')}), run "
      f"unchanged on CPU with their defaults except seed, epochs ({args.epochs}) and data.",
      f"m3oe_jax: `python -m m3oe_jax.sweep` (configs/sweeps/table2.py, `data=reference_split`: "
      f"the file-order split of the authors' scripts; vocabulary "
      f"`{args.vocabulary}`), runs in {ours_dir}.", "",
      "## Overall", "",
      compare.summary_markdown(comparisons, "AUC", "authors' code"), "",
      compare.ordering_markdown(comparisons, "authors' code"), "",
      "Overall AUC: per seed, the mean of the six per-(domain, task) test AUCs (x 100); "
      "mean ± sample std over seeds; difference: m3oe_jax minus the authors' code; noise: 2 "
      "standard errors of the difference (Welch); Welch's two-sided t-test; within: the "
      "difference is at most the larger of 0.50 and the noise. A row on one side only shows "
      "the other as missing. STAR-MDL's six cells come from its two single-task runs (click, "
      "like).", "",
      "## LogLoss", "",
      compare.summary_markdown(comparisons, "LogLoss (mean of pairs)", "authors' code"), "",
      "## Per (domain, task)", "", "AUC:", "",
      compare.cells_markdown(comparisons, ref, None, "authors' code"), "", "LogLoss:", "",
      compare.cells_markdown(comparisons, ref, None, "authors' code", "logloss"), "",
      "## Wall time", "",
      *_times(args, rows, ours_dir), "",
      "Authors' code: each run's subprocess, start to exit (their data preparation "
      "included). m3oe_jax: each run inside the sweep's process, from its start to its test "
      "metrics (the first run's data preparation and every run's compilation included; the "
      "sweep's own start, about the import of JAX, not).", ""]
  path = pathlib.Path(args.workdir) / "side_by_side.md"
  path.write_text("\n".join(lines))
  return path


# ---------------------------------------------------------------------------
# The command line.

def _seeds(text: str) -> tuple[int, ...]:
  try:
    seeds = tuple(int(s) for s in text.split(",") if s.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated whole numbers") from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise argparse.ArgumentTypeError(f"{text!r}: give distinct seeds, e.g. 2022,2023,2024")
  return seeds


def _rows(text: str) -> tuple[str, ...]:
  rows = tuple(r.strip() for r in text.split(",") if r.strip())
  if not rows or len(set(rows)) != len(rows):
    raise argparse.ArgumentTypeError(f"{text!r}: give distinct row labels, e.g. m3oe-mdmt,star-mdl")
  return rows


def _epochs(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of epochs >= 1")
  return value


def parse_args(argv: list[str] | None = None, environ=None) -> argparse.Namespace:
  environ = os.environ if environ is None else environ
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])

  def flag(name, help_text, default=None, **kw):
    env = "SBS_" + name.upper()
    parser.add_argument(f"--{name}", default=environ.get(env, default),
                        help=f"{help_text} (env {env})", **kw)

  flag("data", "the folder reproduce/ml100k.py wrote")
  flag("workdir", "where the runs, reference.json and side_by_side.md go")
  flag("side", "which side to run: authors, ours or both; the markdown is written either way",
       "both", choices=SIDES)
  flag("seeds", "comma-separated seeds", ",".join(map(str, DEFAULT_SEEDS)), type=_seeds)
  flag("rows", "comma-separated rows, MODEL-KIND", ",".join(DEFAULT_ROWS), type=_rows)
  flag("epochs", f"epochs of every run (the paper: {PAPER_EPOCHS})", str(PAPER_EPOCHS),
       type=_epochs)
  flag("vocabulary", "our sparse vocabularies: all_rows (as the authors' code) or train",
       "all_rows", choices=VOCABULARIES)
  flag("authors_m3oe", "a checkout of Applied-Machine-Learning-Lab/M3oE")
  flag("authors_mdmt", "a checkout of zhangzj2114/mdmt (the authors' baselines)")
  flag("torch_python", "a Python with torch, pandas, scikit-learn and tqdm")
  args = parser.parse_args(argv)
  # A default from the environment is not converted by argparse's `type`.
  for name, convert in (("seeds", _seeds), ("rows", _rows), ("epochs", _epochs)):
    value = getattr(args, name)
    if isinstance(value, str):
      try:
        setattr(args, name, convert(value))
      except argparse.ArgumentTypeError as e:
        parser.error(f"argument --{name} (env SBS_{name.upper()}): {e}")
  if args.side not in SIDES:
    parser.error(f"argument --side (env SBS_SIDE): {args.side!r} is not one of {SIDES}")
  for name in ("data", "workdir"):
    if not getattr(args, name):
      parser.error(f"--{name} (or SBS_{name.upper()}) is required")
  if args.torch_python and os.sep in args.torch_python:
    # Each run's subprocess starts in its own folder. Absolute, not resolved: a venv's
    # python is a symlink whose target is not the venv.
    args.torch_python = os.path.abspath(args.torch_python)
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    for label in args.rows:
      if not re.fullmatch(LABEL_PATTERN, label):
        raise InputError(f"--rows: {label!r} is not MODEL-KIND (KIND: single, mtl, mdl, mdmt)")
    data = check_inputs(args)
    pathlib.Path(args.workdir).mkdir(parents=True, exist_ok=True)
    reference_path = pathlib.Path(args.workdir) / "reference.json"
    if args.side in ("authors", "both"):
      needed = {run.repo for label in args.rows for run in authors_runs(label)}
      for name in ("torch_python", "authors_m3oe", "authors_mdmt"):
        if not getattr(args, name) and (name == "torch_python" or name[8:] in needed):
          raise InputError(f"--{name} (or SBS_{name.upper()}) is required for --side="
                           f"{args.side}")
      versions = check_torch_python(args.torch_python)
      checkouts = {}
      for repo, flag_name, script in (("m3oe", "--authors_m3oe", M3OE_SCRIPT),
                                      ("mdmt", "--authors_mdmt", MDMT_SCRIPT)):
        path = getattr(args, flag_name[2:])
        checkouts[repo] = (checkout_info(path, flag_name, script) if path
                           else {"path": None, "commit": None, "modified": None})
        changed = checkouts[repo]["changed_files"] if path else None
        if changed:
          say(f"{PROG}: warning: {flag_name}={path}: {len(changed)} file(s) differ from "
              f"commit {checkouts[repo]['commit'][:7]} ({', '.join(changed[:3])}"
              f"{', ...' if len(changed) > 3 else ''}); the authors' code is meant to run "
              "unchanged")
        elif path and checkouts[repo]["commit"] is None:
          say(f"{PROG}: warning: {flag_name}={path} is not a git checkout; its commit is not "
              "recorded")
      run_authors(args, data, checkouts)
      rows = finished_rows(args, data)
      reference_path = write_reference(args, data, checkouts, rows, versions)
      say(f"wrote {reference_path}")
    if args.side in ("ours", "both"):
      seconds = run_ours(args, data)
      say(f"ours: the sweep took {seconds:.0f}s")
    if reference_path.is_file():
      say(f"wrote {write_markdown(args, data, reference_path)}")
    else:
      say(f"no {reference_path} yet (run --side=authors): no side_by_side.md")
  except (InputError, RunError) as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # a bad reference.json from an earlier run  # pylint: disable=broad-except
    from m3oe_jax.report.collect import ReportError  # pylint: disable=import-outside-toplevel
    if isinstance(e, ReportError):
      print(f"{PROG}: error: {e}", file=sys.stderr)
      return 2
    raise
  return 0


if __name__ == "__main__":
  sys.exit(main())
