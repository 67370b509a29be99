"""What checking prepared data costs (`m3oe_jax/data/integrity.py`).

  python benchmarks/bench_integrity.py                      # 4M rows, KuaiRand's width
  python benchmarks/bench_integrity.py --rows=20000000

Writes one split of random ids and labels with the preparation's writer (34
sparse features as the paper's KuaiRand config, 2 tasks) into --workdir, then
times, in seconds and per 100M rows:
  write        the writer, with its CRC-32 (and the CRC-32 alone);
  header       the checks every load makes of the files (headers and sizes);
  host load    `np.load` of the split (placement 'host', files in page cache)
               and the vectorised value check over it;
  verify       the CRC-32 of every file and the value check (`--verify`);
  stream       a batch of --batch_size rows gathered from the memory-mapped
               files (placement 'stream') with and without its value check.
Medians of --repeats runs.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time
import zlib

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # pylint: disable=wrong-import-position

from m3oe_jax.data import integrity, prepared  # pylint: disable=wrong-import-position
from m3oe_jax.data.raw import storage  # pylint: disable=wrong-import-position
from m3oe_jax.data.schema import FeatureSchema  # pylint: disable=wrong-import-position

NUM_SPARSE, NUM_TASKS, VOCAB = 34, 2, 5000


def median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=4_000_000)
  parser.add_argument("--batch_size", type=int, default=40960)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--workdir", default="")
  args = parser.parse_args()
  work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench-integrity-"))
  split_dir = work / "columnar" / "train"
  split_dir.mkdir(parents=True, exist_ok=True)
  n = args.rows
  schema = FeatureSchema([f"f{i}" for i in range(NUM_SPARSE)], [VOCAB] * NUM_SPARSE, [],
                         ["d0", "d1", "d2"], [f"t{i}" for i in range(NUM_TASKS)],
                         source={"num_rows": {"train": n}})
  rng = np.random.default_rng(0)
  block = 1 << 20
  chunks = [(rng.integers(0, VOCAB, (min(block, n - s), NUM_SPARSE), dtype=np.int32),
             rng.integers(0, 3, min(block, n - s), dtype=np.int32),
             rng.integers(0, 2, (min(block, n - s), NUM_TASKS)).astype(np.float32))
            for s in range(0, n, block)]

  def write():
    writers = {
        "sparse": storage.NpyWriter(str(split_dir / "sparse.npy"), np.int32,
                                    (n, NUM_SPARSE)),
        "dense": storage.NpyWriter(str(split_dir / "dense.npy"), np.float32, (n, 0)),
        "domain": storage.NpyWriter(str(split_dir / "domain.npy"), np.int32, (n,)),
        "labels": storage.NpyWriter(str(split_dir / "labels.npy"), np.float32,
                                    (n, NUM_TASKS))}
    for ids, domain, labels in chunks:
      writers["sparse"].append(ids)
      writers["dense"].append(np.zeros((len(ids), 0), np.float32))
      writers["domain"].append(domain)
      writers["labels"].append(labels)
    for w in writers.values():
      w.close()

  def crc_only():
    for ids, domain, labels in chunks:
      for a in (ids, domain, labels):
        zlib.crc32(a)

  where = lambda key: str(split_dir / (key + ".npy"))
  folder = str(work)
  write_seconds = median_time(write, args.repeats)
  columns = storage.load_columnar(str(split_dir), mmap=False)
  nbytes = sum(os.path.getsize(where(k)) for k in ("sparse", "dense", "domain", "labels"))
  mapped = prepared.MemmapSource(str(split_dir))
  checked = prepared.MemmapSource(
      str(split_dir), lambda batch, rows: integrity.check_values(batch, schema, where,
                                                                 folder, rows=rows))
  batch_rows = np.sort(rng.choice(n, args.batch_size, replace=False))
  results = {
      "write (with CRC-32)": write_seconds,
      "CRC-32 of the same bytes": median_time(crc_only, args.repeats),
      "header checks (every load)": median_time(
          lambda: integrity.check_split_files(str(split_dir), schema, n, folder),
          args.repeats),
      "np.load (placement host)": median_time(
          lambda: storage.load_columnar(str(split_dir), mmap=False), args.repeats),
      "value check of loaded columns": median_time(
          lambda: integrity.check_values(columns, schema, where, folder), args.repeats),
      "CRC-32 of the files (verify)": median_time(
          lambda: [integrity.file_crc32(where(k)) for k in ("sparse", "domain", "labels")],
          args.repeats),
  }
  print(f"{n:,} rows, {NUM_SPARSE} sparse ids and {NUM_TASKS} labels a row, "
        f"{nbytes / 1e9:.2f} GB of .npy files in {work}")
  for name, seconds in results.items():
    print(f"  {name:<34}{seconds:9.3f} s  {seconds * 1e8 / n:9.2f} s per 100M rows  "
          f"{nbytes / seconds / 1e9:7.2f} GB/s")
  reps = max(args.repeats, 20)
  plain = median_time(lambda: mapped.take(batch_rows), reps)
  with_check = median_time(lambda: checked.take(batch_rows), reps)
  batch = mapped.take(batch_rows)
  alone = median_time(lambda: integrity.check_values(batch, schema, where, folder,
                                                     rows=batch_rows), reps)
  print(f"  stream batch of {args.batch_size:,} rows: gather {plain * 1e3:.2f} ms, with the "
        f"value check {with_check * 1e3:.2f} ms; the check alone {alone * 1e3:.2f} ms "
        f"({alone / plain * 100:.0f}% of the gather)")
  if not args.workdir:
    shutil.rmtree(work)


if __name__ == "__main__":
  main()
