"""Trains m3oe_jax from a recorded run of the authors' trainer and compares, epoch by epoch.

    python reproduce/follow_authors.py --golden=DIR/m3oe.npz --workdir=DIR [--dtype=float32]

`--golden` is a file of reproduce/make_trajectory_goldens.py (beside it, the
`ml-100k-head<rows>.zip` it wrote). The run starts from the recorded initial weights and
reads the recorded row orders (`config.init_weights`, `config.train_order`), with the
recorded widths, batch size, epochs and patience, and prints each epoch's validation mean
AUC beside the authors', then the test AUCs of the weights each side tests.

It is how a whole run, not only a few epochs, is checked in the authors' own precision:
record their script's run with `make_trajectory_goldens.py --float32 --rows=100000
--batch_size=40960 --epochs=50 --patience=10 --paper_widths`, then follow it here with
`--dtype=float32` (docs/reproducing.md has the figures). In float64 (`--dtype=float64`, with
JAX_ENABLE_X64=1) it is what tests/test_trajectory.py checks on the vendored files.

The helpers that map the authors' ids to ours by raw value are shared with that test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: this checkout's m3oe_jax
  sys.path.insert(0, str(REPO))

from m3oe_jax.configs import movielens  # noqa: E402  pylint: disable=g-import-not-at-top

# The authors' columns: user_id, movie_id, gender, age, occupation, zip, cate_id,
# domain_indicator; ours: the sparse features in config order, then age.
TORCH_SPARSE_COLUMNS = (0, 1, 2, 4, 5, 6, 7)
TORCH_DENSE_COLUMN = 3


def read_golden(path) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def section(g: dict, prefix: str) -> dict[str, np.ndarray]:
  """The entries under `prefix/`, with the prefix dropped."""
  return {k[len(prefix) + 1:]: v for k, v in g.items() if k.startswith(prefix + "/")}


def data_config(archive: pathlib.Path, data_dir):
  """MovieLens read from `archive` as the authors' script reads its CSV: the file-order
  split and vocabularies over all rows."""
  config = movielens.get_config("default").data
  digest = hashlib.sha256(archive.read_bytes()).hexdigest()
  config.update(dict(archive=str(archive), archive_checksum=f"sha256:{digest}", download=False,
                     data_dir=str(data_dir), split="file_order", vocabulary="all_rows",
                     placement="host"))
  return config


def all_rows(dataset) -> dict[str, np.ndarray]:
  """Every prepared row, train then validation then test (the authors' file order)."""
  rows = {}
  for split in ("train", "validation", "test"):
    source = dataset.splits[split]
    for key, value in source.take(np.arange(len(source))).items():
      rows.setdefault(key, []).append(np.asarray(value))
  return {k: np.concatenate(v) for k, v in rows.items()}


def movielens_features() -> tuple[str, ...]:
  return tuple(movielens.get_config("default").data.sparse_features)


def torch_ids_of_ours(ours: np.ndarray, theirs: np.ndarray, vocab: int) -> np.ndarray:
  """For one feature, the authors' id of each of our ids (-1: never seen); both
  encodings of the same rows must be one-to-one."""
  mapping = np.full(vocab, -1, np.int64)
  mapping[ours] = theirs
  if not np.array_equal(mapping[ours], theirs):
    raise ValueError("one of our ids has two torch ids")
  seen = mapping[mapping >= 0]
  if len(np.unique(seen)) != len(seen):
    raise ValueError("one torch id has two of our ids")
  return mapping


def mapped_weights(g: dict, prefix: str, rows: dict, vocab_sizes) -> dict[str, np.ndarray]:
  """The file's weights under `prefix/` with embedding rows put at our ids (our
  OOV row, which the authors' tables lack, 0)."""
  named = dict(section(g, prefix))
  for j, (feature, vocab) in enumerate(zip(movielens_features(), vocab_sizes)):
    table = named[f"params/embedding/{feature}"]
    mapping = torch_ids_of_ours(rows["sparse"][:, j],
                                g["rows/x"][:, TORCH_SPARSE_COLUMNS[j]].astype(np.int64), vocab)
    ours = np.zeros((vocab, table.shape[1]), table.dtype)
    ours[mapping >= 0] = table[mapping[mapping >= 0]]
    named[f"params/embedding/{feature}"] = ours
  return named


def write_start(g: dict, rows: dict, vocab_sizes, folder: pathlib.Path):
  """`folder`/init.npz (the recorded initial weights, at our ids) and `folder`/order.npz
  (the recorded row orders): what `run_config` starts from. Returns their paths."""
  init_path, order_path = folder / "init.npz", folder / "order.npz"
  np.savez(init_path, **mapped_weights(g, "init", rows, vocab_sizes))
  np.savez(order_path, **section(g, "order"))
  return init_path, order_path


def run_config(kind: str, g: dict, data, init_path, order_path, dtype: str):
  """The model's paper config with the recorded run's widths, batch, epochs, patience and
  task, starting from `init_path` and reading the orders of `order_path`."""
  config = movielens.get_config(f"model={kind}")
  config.data = data
  widths = tuple(int(w) for w in g["config/widths"])
  if widths:
    config.model[kind].fcn_dims = widths
  config.model.dtype = dtype
  config.batch_size = config.eval_batch_size = int(g["config/batch_size"])
  # The epochs the authors' trainer ran (fewer than config/epochs where early stopping
  # fired): the order file holds those.
  config.num_epochs, config.patience = len(g["validation/auc"]), int(g["config/patience"])
  if str(g["config/task"]) != "all":
    config.variant.tasks = (movielens.get_config("default").data.tasks.index(
        str(g["config/task"])),)
  config.init_weights, config.train_order = str(init_path), str(order_path)
  config.seed = int(g["config/seed"])
  config.compilation_cache_dir = ""
  return config


def pair_order(schema, task: str) -> list[str]:
  """Our pair names in the authors' task-major order."""
  tasks = list(schema.task_names) if task == "all" else [task]
  return [f"{d}/{t}" for t in tasks for d in schema.domain_names]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--golden", required=True, type=pathlib.Path,
                      help="a <model>.npz of make_trajectory_goldens.py")
  parser.add_argument("--workdir", required=True, type=pathlib.Path)
  parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
  args = parser.parse_args(argv)
  from m3oe_jax import errors, train  # pylint: disable=import-outside-toplevel
  from m3oe_jax.data import load_dataset  # pylint: disable=import-outside-toplevel
  if not args.golden.is_file():
    raise SystemExit(f"--golden={args.golden}: no such file")
  g = read_golden(args.golden)
  kind = str(g["config/kind"])
  archives = sorted(args.golden.parent.glob("ml-100k-head*.zip"))
  if len(archives) != 1:
    raise SystemExit(f"--golden: expected one ml-100k-head<rows>.zip beside {args.golden}, "
                     f"found {len(archives)}")
  data = data_config(archives[0], args.workdir / "data")
  dataset = load_dataset(data)
  rows = all_rows(dataset)
  args.workdir.mkdir(parents=True, exist_ok=True)
  init_path, order_path = write_start(g, rows, dataset.schema.vocab_sizes, args.workdir)
  config = run_config(kind, g, data, init_path, order_path, args.dtype)
  try:
    train.train_and_evaluate(config, str(args.workdir / "run"))
  except errors.UserError as e:
    raise SystemExit(str(e)) from None

  order = pair_order(dataset.schema, str(g["config/task"]))
  records = [json.loads(line) for line in
             (args.workdir / "run" / "metrics.jsonl").read_text().splitlines()]
  validations = [r["validation"] for r in records if "validation" in r]
  print(f"{kind}, {args.dtype}, from {args.golden}: validation mean AUC per epoch")
  print(f"{'epoch':>5} {'authors':>9} {'ours':>9} {'ours - authors':>15}")
  for epoch, (theirs, ours) in enumerate(zip(g["validation/auc"], validations)):
    mean = float(np.mean([ours["pairs"][p]["auc"] for p in order]))
    print(f"{epoch:>5} {theirs.mean():>9.5f} {mean:>9.5f} {mean - theirs.mean():>+15.2e}")
  result = json.loads((args.workdir / "run" / "metrics.json").read_text())
  ours = [result["test"]["pairs"][p]["auc"] for p in order]
  print(f"test AUC per (domain, task) ({', '.join(order)}) and their mean:")
  print(f"  authors (epoch {int(g['test/epoch'])}): "
        f"{' '.join(f'{a:.4f}' for a in g['test/auc'])}  mean {g['test/auc'].mean():.4f}")
  tested = result["best_epoch"] if result["tested_weights"] == "best" else len(validations) - 1
  print(f"  ours    (epoch {tested}): {' '.join(f'{a:.4f}' for a in ours)}  "
        f"mean {np.mean(ours):.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
