"""Preparation speed and peak memory of the files dataset (`config.data.name="files"`).

  python benchmarks/bench_files_prepare.py --rows=5000000      # a quick check
  nice python benchmarks/bench_files_prepare.py                # 100M rows

Generates impression logs in the layout of `m3oe_jax/data/fake_files.py`
(--rows rows in files of --rows_per_file, --users users and --items items in
two side tables, CSV or Parquet) into --workdir, then prepares them through
the real builder (`prepared.prepare`: spill, split, vocabularies, encoding,
TFDS shards) in a fresh subprocess, and prints its rows/s and peak resident
memory (ru_maxrss of that process). The declaration is that of
`configs/files.py`, with user ids hashed (--hash_users) or from the training
split.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate(args, raw: pathlib.Path) -> None:
  import pyarrow.csv as pa_csv  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  from m3oe_jax.data import fake_files  # pylint: disable=g-import-not-at-top
  raw.mkdir(parents=True, exist_ok=True)
  pa_csv.write_csv(fake_files.users_table(args.users), str(raw / "users.csv"))
  pa_csv.write_csv(fake_files.items_table(args.items), str(raw / "items.csv"))
  block_rows = min(1_000_000, args.rows)
  blocks = -(-args.rows // block_rows)
  per_file = max(1, args.rows_per_file // block_rows)
  writer, path = None, None
  for b in range(blocks):
    rows = min(block_rows, args.rows - b * block_rows)
    table = fake_files.impression_block(b, rows, args.users, args.items)
    if b % per_file == 0:
      if writer is not None:
        writer.close()
      path = raw / f"impressions-{b // per_file:05d}.{args.format}"
      writer = (pq.ParquetWriter(str(path), table.schema) if args.format == "parquet"
                else pa_csv.CSVWriter(str(path), table.schema))
    writer.write_table(table)
  writer.close()


def data_config(raw: pathlib.Path, data_dir: str, hash_users: bool):
  from configs import files as files_config  # pylint: disable=g-import-not-at-top
  config = files_config.get_config()
  files = files_config.shipped_declaration(raw)
  files["logs"] = str(raw / "impressions-*")
  if hash_users:
    files["categorical"]["user_id"] = {"vocabulary": {"mode": "hash", "buckets": 1 << 20}}
  config.data.files = files
  config.data.data_dir = data_dir
  return config


def child_prepare(raw: str, data_dir: str, hash_users: bool) -> None:
  """In a fresh process: prepare, then report time and peak memory."""
  import logging  # pylint: disable=g-import-not-at-top
  logging.disable(logging.WARNING)
  from m3oe_jax.data import prepared  # pylint: disable=g-import-not-at-top
  config = data_config(pathlib.Path(raw), data_dir, hash_users)
  start = time.perf_counter()
  builder = prepared.prepare(config.data)
  seconds = time.perf_counter() - start
  schema = prepared.read_schema(builder)
  rows = sum(schema.source["num_rows"].values())
  print("RESULT " + json.dumps({
      "rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds),
      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
      "vocab_sizes": dict(zip(schema.sparse_names, schema.vocab_sizes))}), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=100_000_000)
  parser.add_argument("--rows_per_file", type=int, default=10_000_000)
  parser.add_argument("--users", type=int, default=1_000_000)
  parser.add_argument("--items", type=int, default=100_000)
  parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
  parser.add_argument("--hash_users", action="store_true")
  parser.add_argument("--workdir", default="/tmp/m3oe_bench_files")
  parser.add_argument("--keep", action="store_true", help="keep the generated files")
  parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child_prepare(args.child[0], args.child[1], args.child[2] == "1")
    return
  work = pathlib.Path(args.workdir)
  raw = work / f"raw-{args.rows}-{args.format}"
  if not raw.exists():
    start = time.perf_counter()
    generate(args, raw)
    print(f"generated {args.rows:,} rows in {time.perf_counter() - start:.0f} s: {raw}",
          flush=True)
  data_dir = work / "tfds"
  shutil.rmtree(data_dir, ignore_errors=True)
  out = subprocess.run(
      [sys.executable, __file__, "--child", str(raw), str(data_dir),
       "1" if args.hash_users else "0"],
      capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
  if out.returncode or not lines:
    print(out.stdout[-3000:], out.stderr[-3000:])
    sys.exit(1)
  result = json.loads(lines[-1][len("RESULT "):])
  print(f"prepared {result['rows']:,} rows ({args.format}, 2 side tables, "
        f"{args.users:,} users, {args.items:,} items) in {result['seconds']} s: "
        f"{result['rows_per_s']:,} rows/s, peak RSS {result['peak_rss_gib']} GiB")
  print(json.dumps(result))
  shutil.rmtree(data_dir, ignore_errors=True)
  if not args.keep:
    shutil.rmtree(raw, ignore_errors=True)


if __name__ == "__main__":
  main()
