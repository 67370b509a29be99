"""Trajectory golden files: the authors' *trainers* on a small real dataset, recorded.

    TORCH_PYTHON reproduce/make_trajectory_goldens.py \
        --authors_m3oe=PATH/M3oE --authors_mdmt=PATH/mdmt \
        --data=DIR_WITH_ml-1m.csv --rows=8000 --out=tests/assets/trajectory

Needs a Python with torch, pandas, scikit-learn and tqdm, and checkouts of the
authors' code: Applied-Machine-Learning-Lab/M3oE (M3oE and its trainer with the
architecture-weight update) and zhangzj2114/mdmt (the baselines and their
trainer). Not run by CI; its files are vendored under tests/assets/trajectory/.

For each model (M3oE-MDMT, MMoE-MDMT, PLE-MDMT, STAR-MDL on "click") it takes the
first `--rows` rows of the authors' `ml-1m.csv` (`reproduce/ml100k.py` writes one
from MovieLens-100K), prepares them with the authors' own data function, builds
the authors' model class (smaller widths, so the files stay small) and trainer
with the authors' optimiser settings, and trains it for a few epochs. Nothing of
theirs is changed; it is observed:
  * the torch sampler's permutation of every epoch of the training loader and of
    the M3oE trainer's architecture-step iterator (`order/train/<e>`,
    `order/arch/<e>`, the format of m3oe_jax/data/row_order.py);
  * the loss of every step (`loss/train` and, for M3oE, `loss/arch`);
  * every weight and BatchNorm statistic at the start (`init/...`) and after each
    epoch (`epoch<e>/...`), in the exchange layout (torch ids);
  * the six validation AUCs per epoch, the early stopper's decisions, and the
    test AUC and logloss of the weights the authors' script tests;
  * the rows as the authors encoded them (`rows/...`, all splits in file order),
    so another implementation can map its ids to theirs by raw value.
Everything runs in float64 (see `Recorder.watching`; `--float32` keeps the
authors' own precision, which is their script's run recorded); the dense values are
rounded to float32 first, as a prepared dataset stores them. It also writes `<rows>.zip`, the same rows in the ML-1M archive layout, for
m3oe_jax's MovieLens reader.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import io
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch_weights  # noqa: E402  pylint: disable=g-import-not-at-top

DENSE_COLUMN = 3  # age, in the authors' column order
SPARSE_NAMES = ["user_id", "movie_id", "gender", "occupation", "zip", "genre", "domain"]
BATCH = 1024
SEED = 2022
FLOAT64 = True  # --float32 clears it: the authors' own precision

# name: (checkout, example script, task, epochs, patience)
RUNS = {
    "m3oe": ("m3oe", "examples/run_movielens.py", "all", 4, 10),
    "mmoe": ("mdmt", "examples/run_movielens_rank_multi_domain.py", "all", 6, 1),
    "ple": ("mdmt", "examples/run_movielens_rank_multi_domain.py", "all", 5, 10),
    "star": ("mdmt", "examples/run_movielens_rank_multi_domain.py", "click", 5, 10),
}
# The widths of each model here (the paper's are larger; the training path is the same).
WIDTHS = {"m3oe": [32, 16, 16, 8], "mmoe": [16, 8], "star": [16, 12, 12, 8]}
PAPER_WIDTHS = {"m3oe": [512, 256, 256, 64], "mmoe": [256, 64], "star": [512, 256, 256, 64]}


def configure(args) -> None:
  """Applies the command line's batch size, seed, precision, epochs, patience and widths."""
  global BATCH, SEED, FLOAT64
  BATCH, SEED, FLOAT64 = args.batch_size, args.seed, not args.float32
  for kind, (repo, script, task, epochs, patience) in RUNS.items():
    RUNS[kind] = (repo, script, task, args.epochs or epochs, args.patience or patience)
  if args.paper_widths:
    WIDTHS.update(PAPER_WIDTHS)


def load_example(checkout: pathlib.Path, script: str, name: str):
  """The authors' example module (its data function, unchanged), imported."""
  sys.path.insert(0, str(checkout))
  spec = importlib.util.spec_from_file_location(name, checkout / script)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class Recorder:
  """What the authors' trainer does, observed through torch's own entry points."""

  def __init__(self):
    self.phase = "setup"
    self.orders = {"train": [], "arch": []}
    self.losses = {"train": [], "arch": []}

  @contextlib.contextmanager
  def watching(self, torch):
    sampler_iter = torch.utils.data.RandomSampler.__iter__
    backward = torch.Tensor.backward
    loader_init = torch.utils.data.DataLoader.__init__
    recorder = self

    def recorded_iter(sampler):
      # Runs at the iterator's first batch (loaders are single-process here), so
      # the phase says whose permutation this is.
      order = list(sampler_iter(sampler))
      if recorder.phase not in recorder.orders:
        raise RuntimeError(f"a shuffled loader started during {recorder.phase!r}")
      recorder.orders[recorder.phase].append(order)
      yield from order

    def recorded_backward(tensor, *args, **kwargs):
      recorder.losses["arch" if recorder.phase == "arch" else "train"].append(
          float(tensor.detach()))
      return backward(tensor, *args, **kwargs)

    def in_process_loader(loader, *args, **kwargs):
      kwargs["num_workers"] = 0  # the order comes from the sampler, not the workers
      return loader_init(loader, *args, **kwargs)

    to_float = torch.Tensor.float
    default_dtype = torch.get_default_dtype()
    torch.utils.data.RandomSampler.__iter__ = recorded_iter
    torch.Tensor.backward = recorded_backward
    torch.utils.data.DataLoader.__init__ = in_process_loader
    if FLOAT64:
      # float64 throughout: the weights (default dtype) and what their code casts
      # with .float() (labels, dense values), so float32 rounding, which Adam
      # amplifies where a gradient is near zero, does not end the comparison early.
      torch.set_default_dtype(torch.float64)
      torch.Tensor.float = torch.Tensor.double
    try:
      yield self
    finally:
      torch.utils.data.RandomSampler.__iter__ = sampler_iter
      torch.Tensor.backward = backward
      torch.utils.data.DataLoader.__init__ = loader_init
      torch.Tensor.float = to_float
      torch.set_default_dtype(default_dtype)


def exchange(kind: str, model, num_domains: int, num_tasks: int) -> dict[str, np.ndarray]:
  """The model's weights (`params/<name>`) and BatchNorm statistics (`batch_stats/...`)."""
  named = torch_weights.to_exchange(kind, model, num_domains, num_tasks, SPARSE_NAMES)
  return {(k if k.startswith("batch_stats/") else f"params/{k}"): v for k, v in named.items()}


def build_model(kind: str, module, feas, num_domains: int, num_tasks: int):
  if kind == "m3oe":
    return module.MDMTRec(feas, domain_num=num_domains, task_num=num_tasks,
                          fcn_dims=WIDTHS["m3oe"], expert_num=4, exp_d=1, exp_t=1, bal_d=1,
                          bal_t=1)
  if kind == "mmoe":
    return module.MMOE(feas, domain_num=num_domains, task_num=num_tasks,
                       fcn_dims=WIDTHS["mmoe"], expert_num=4)
  if kind == "ple":
    return module.PLE(feas, domain_num=num_domains, task_num=num_tasks)
  return module.STAR(feas, domain_num=num_domains, fcn_dims=WIDTHS["star"])


def record(kind: str, module, data_dir: pathlib.Path, torch) -> dict[str, np.ndarray]:
  _, _, task, epochs, patience = RUNS[kind]
  recorder = Recorder()
  with tempfile.TemporaryDirectory() as scratch, recorder.watching(torch):
    module.setup_seed(SEED)
    (dense_feas, sparse_feas, x_train, y_train, x_val, y_val, x_test, y_test,
     num_domains) = module.get_movielens_data_rank_multidomain(task, "all", str(data_dir))
    num_tasks = 2 if task == "all" else 1
    for x in (x_train, x_val, x_test):  # dense values as a float32 dataset stores them
      x[:, DENSE_COLUMN] = x[:, DENSE_COLUMN].astype(np.float32)
    loaders = module.DataGenerator(x_train, y_train).generate_dataloader(
        x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test, batch_size=BATCH)
    train_loader, val_loader, test_loader = loaders
    # .double(): M3oE makes its architecture logits from float32 numpy arrays.
    model = build_model(kind, module, dense_feas + sparse_feas, num_domains, num_tasks)
    model = model.double() if FLOAT64 else model
    out = {f"init/{k}": v for k, v in exchange(kind, model, num_domains, num_tasks).items()}
    if kind == "m3oe":
      trainer = module.CTRTrainer(
          model, optimizer_params={"lr": 1e-2, "weight_decay": 1e-5},
          optimizer_params_darts={"lr": 1e-3, "weight_decay": 1e-5}, n_epoch=epochs,
          earlystop_patience=patience, device="cpu", model_path=scratch + "/")
    else:
      trainer = module.CTRTrainer(
          model, optimizer_params={"lr": 1e-3, "weight_decay": 1e-5}, n_epoch=epochs,
          earlystop_patience=patience, device="cpu", model_path=scratch,
          scheduler_fn=torch.optim.lr_scheduler.StepLR,
          scheduler_params={"step_size": 4, "gamma": 0.8})
    validations, decisions = [], []
    train_one_epoch, evaluate = trainer.train_one_epoch, trainer.evaluate_multi_domain
    stop_training = trainer.early_stopper.stop_training

    def observed_epoch(*args, **kwargs):
      recorder.phase = "train"
      train_one_epoch(*args, **kwargs)
      recorder.phase = "arch"  # M3oE's architecture step follows the epoch

    def observed_evaluate(model_, loader, *args, **kwargs):
      recorder.phase = "eval"
      if loader is val_loader:
        epoch = len(validations)
        for k, v in exchange(kind, model_, num_domains, num_tasks).items():
          out[f"epoch{epoch}/{k}"] = v
      result = evaluate(model_, loader, *args, **kwargs)
      if loader is val_loader:
        validations.append(result[1])
      return result

    def observed_stop(auc, weights):
      stop = stop_training(auc, weights)
      decisions.append((auc, stop, trainer.early_stopper.trial_counter,
                        trainer.early_stopper.best_auc))
      return stop

    trainer.train_one_epoch, trainer.evaluate_multi_domain = observed_epoch, observed_evaluate
    trainer.early_stopper.stop_training = observed_stop
    fit_args = dict(val_dataloader=val_loader, domain_num=num_domains, task_num=num_tasks)
    if kind == "m3oe":
      trainer.fit(train_loader, exp_d=1, exp_t=1, bal_d=1, bal_t=1, **fit_args)
    else:
      trainer.fit(train_loader, warmup=0, n_w=0.01, sd_w=0.01, st_w=1, t_w=-1, orth_d_w=-1,
                  orth_t_w=-1, w11=1, w12=1, w21=1, w22=1, w31=1, w32=1, **fit_args)
    logloss, auc, _, _ = evaluate(trainer.model, test_loader, num_domains, task_num=num_tasks)
  stopped = bool(decisions[-1][1])
  best = int(np.argmax([d[0] for d in decisions]))  # strict > keeps the first best
  out.update({
      "loss/train": np.asarray(recorder.losses["train"], np.float64),
      "loss/arch": np.asarray(recorder.losses["arch"], np.float64),
      "validation/auc": np.asarray(validations, np.float64),  # [epochs, T*D], t-major
      "early_stopping/stopped": np.asarray([d[1] for d in decisions]),
      "early_stopping/counter": np.asarray([d[2] for d in decisions]),
      "test/auc": np.asarray(auc, np.float64), "test/logloss": np.asarray(logloss, np.float64),
      "test/epoch": np.asarray(best if stopped else len(decisions) - 1),
      "rows/x": np.concatenate([x_train, x_val, x_test]).astype(np.float64),
      "rows/y": np.concatenate([y_train, y_val, y_test]).astype(np.int64),
      "config/kind": np.asarray(kind), "config/task": np.asarray(task),
      "config/epochs": np.asarray(epochs), "config/patience": np.asarray(patience),
      "config/batch_size": np.asarray(BATCH), "config/seed": np.asarray(SEED),
      "config/D": np.asarray(num_domains), "config/T": np.asarray(num_tasks),
      "config/widths": np.asarray(WIDTHS.get(kind, [])),
      "config/num_train": np.asarray(len(x_train)),
  })
  for stream, orders in recorder.orders.items():
    for epoch, order in enumerate(orders):
      out[f"order/{stream}/{epoch}"] = np.asarray(order, np.int64)
  return out


def write_archive(csv_path: pathlib.Path, target: pathlib.Path) -> None:
  """The rows of an authors' ml-1m.csv as an ML-1M archive (ratings in file order)."""
  ratings, users, movies = [], {}, {}
  with open(csv_path, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      ratings.append("::".join(row[k] for k in ("user_id", "movie_id", "rating", "timestamp")))
      users.setdefault(row["user_id"], "::".join(
          row[k] for k in ("user_id", "gender", "age", "occupation", "zip")))
      movies.setdefault(row["movie_id"], "::".join(row[k] for k in ("movie_id", "title",
                                                                   "genres")))
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
    for name, lines in (("ratings.dat", ratings), ("users.dat", users.values()),
                        ("movies.dat", movies.values())):
      info = zipfile.ZipInfo(f"ml-1m/{name}", date_time=(1980, 1, 1, 0, 0, 0))
      z.writestr(info, "".join(line + "\n" for line in lines).encode("latin-1"),
                 zipfile.ZIP_DEFLATED)
  target.write_bytes(buffer.getvalue())


def head_of_csv(source: pathlib.Path, rows: int, target_dir: pathlib.Path) -> pathlib.Path:
  target_dir.mkdir(parents=True, exist_ok=True)
  with open(source, encoding="utf-8") as f:
    lines = [f.readline() for _ in range(rows + 1)]
  if not lines[-1]:
    raise SystemExit(f"--data: {source} has fewer than {rows} rows")
  path = target_dir / "ml-1m.csv"
  path.write_text("".join(lines), encoding="utf-8")
  return path


def commit_of(checkout: pathlib.Path) -> str:
  try:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--authors_m3oe", required=True, type=pathlib.Path)
  parser.add_argument("--authors_mdmt", required=True, type=pathlib.Path)
  parser.add_argument("--data", required=True, type=pathlib.Path,
                      help="folder holding the authors' ml-1m.csv")
  parser.add_argument("--rows", type=int, default=8000)
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument("--models", default=",".join(RUNS))
  parser.add_argument("--batch_size", type=int, default=BATCH)
  parser.add_argument("--epochs", type=int, default=0, help="0: each model's own (RUNS)")
  parser.add_argument("--patience", type=int, default=0,
                      help="0: each model's own (RUNS); their scripts use 10")
  parser.add_argument("--paper_widths", action="store_true",
                      help="the authors' scripts' widths instead of the small ones")
  parser.add_argument("--seed", type=int, default=SEED, help="the authors' setup_seed")
  parser.add_argument("--float32", action="store_true",
                      help="train in the authors' own precision (float32), not float64: "
                           "their script's run, recorded")
  args = parser.parse_args(argv)
  configure(args)
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  checkouts = {"m3oe": args.authors_m3oe.resolve(), "mdmt": args.authors_mdmt.resolve()}
  for flag, path in checkouts.items():
    if not (path / "examples").is_dir():
      raise SystemExit(f"--authors_{flag}={path}: not a checkout of the authors' code")
  args.out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as scratch:
    data_dir = pathlib.Path(scratch)
    csv_path = head_of_csv(args.data / "ml-1m.csv", args.rows, data_dir)
    write_archive(csv_path, args.out / f"ml-100k-head{args.rows}.zip")
    modules = {}
    for kind in args.models.split(","):
      repo, script, *_ = RUNS[kind]
      if repo not in modules:
        modules[repo] = load_example(checkouts[repo], script, f"authors_{repo}")
      golden = record(kind, modules[repo], data_dir, torch)
      golden["config/source"] = np.asarray(f"{repo}@{commit_of(checkouts[repo])}:{script}")
      np.savez_compressed(args.out / f"{kind}.npz", **golden)
      summary = {"model": kind, "steps": len(golden["loss/train"]),
                 "validation_mean_auc": golden["validation/auc"].mean(axis=1).round(5).tolist(),
                 "stopped": golden["early_stopping/stopped"].tolist(),
                 "test_mean_auc": round(float(golden["test/auc"].mean()), 5)}
      print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
