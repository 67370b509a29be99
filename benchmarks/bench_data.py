"""Preparation and input-pipeline speed on generated KuaiRand-format logs.

  python benchmarks/bench_data.py                       # CI size: 200k rows
  nice python benchmarks/bench_data.py --rows=2600000,30000000   # the issue's sizes

For each size, raw logs in the exact KuaiRand-Pure format (27,285 users, 7,583
videos, like Pure) are generated streaming into --workdir (kept in /tmp by
default; 30M rows take about 2.5 GB of CSV and ~20 GB while preparing), then
prepared by the real builder in a subprocess whose peak resident memory
(ru_maxrss) is reported with its rows/s.

Then, on the smallest size, the input pipeline: shuffled batches of
--batch_size gathered whole from the prepared columns (held in host memory,
and memory-mapped as for data too large for memory), in rows/s, next to the
model's training throughput from `benchmarks/bench_train.py` (if present) on
the same machine, and their ratio.
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

import numpy as np  # pylint: disable=wrong-import-position

PURE_USERS, PURE_VIDEOS = 27_285, 7_583


def data_config(raw_top: str, data_dir: str, placement: str = "auto"):
  from configs import kuairand as kuairand_config  # pylint: disable=g-import-not-at-top
  config = kuairand_config.get_config()
  config.data.extracted_dir = raw_top
  config.data.data_dir = data_dir
  config.data.download = False
  config.data.placement = placement
  return config


def child_prepare(raw_top: str, data_dir: str) -> None:
  """Runs in a subprocess: prepare and report time and peak memory."""
  import logging  # pylint: disable=g-import-not-at-top
  logging.disable(logging.WARNING)
  from m3oe_jax.data import prepared  # pylint: disable=g-import-not-at-top
  config = data_config(raw_top, data_dir)
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  start = time.perf_counter()
  builder = prepared.prepare(config.data)
  seconds = time.perf_counter() - start
  schema = prepared.read_schema(builder)
  print("RESULT " + json.dumps({
      "seconds": seconds,
      "rows_kept": sum(schema.source["num_rows"].values()),
      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "rss_after_imports_bytes": rss_before * 1024,
      "data_path": os.fspath(builder.data_path)}))


def generate(rows: int, workdir: pathlib.Path) -> tuple[str, float]:
  from m3oe_jax.data import fake_raw  # pylint: disable=g-import-not-at-top
  raw = workdir / f"raw_{rows}"
  top = raw / "KuaiRand-Pure"
  marker = raw / "COMPLETE"
  if marker.exists():
    return str(top), 0.0
  shutil.rmtree(raw, ignore_errors=True)
  start = time.perf_counter()
  fake_raw.write_kuairand(raw, num_rows=rows, num_users=PURE_USERS, num_videos=PURE_VIDEOS,
                          seed=0, block_rows=500_000)
  marker.write_text("ok")
  return str(top), time.perf_counter() - start


def bench_prepare(rows: int, workdir: pathlib.Path, keep: bool) -> dict:
  top, gen_s = generate(rows, workdir)
  data_dir = workdir / f"tfds_{rows}"
  shutil.rmtree(data_dir, ignore_errors=True)
  proc = subprocess.run(
      [sys.executable, __file__, "--_child_prepare", top, str(data_dir)],
      capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    raise SystemExit(f"preparing {rows} rows failed")
  r = json.loads(lines[-1][7:])
  raw_bytes = sum(p.stat().st_size for p in pathlib.Path(top).rglob("*.csv"))
  r.update(rows=rows, raw_bytes=raw_bytes, generate_seconds=gen_s,
           rows_per_s=rows / r["seconds"], data_dir=str(data_dir))
  if not keep:
    shutil.rmtree(pathlib.Path(top).parent, ignore_errors=True)
  return r


def bench_pipeline(raw_top: str, data_dir: str, batch_size: int, steps: int) -> dict:
  from m3oe_jax.data import pipeline, prepared  # pylint: disable=g-import-not-at-top
  out = {}
  for placement in ("host", "stream"):
    ds = prepared.load(data_config(raw_top, data_dir, placement).data)
    train = ds.splits["train"]
    pipeline.shuffled_batch(train, batch_size, seed=0, position=0)  # warm up
    times = []
    for pos in range(1, steps + 1):
      t = time.perf_counter()
      b = pipeline.shuffled_batch(train, batch_size, seed=0, position=pos)
      times.append(time.perf_counter() - t)
      assert b["sparse"].shape[0] == batch_size
    out[placement] = batch_size / float(np.median(times))
  return out


def model_throughput(raw_top: str, data_dir: str, batch_size: int) -> float | None:
  try:
    from benchmarks.bench_train import measure_train_throughput  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"(model throughput not measured: benchmarks/bench_train.py unavailable: {e})")
    return None
  config = data_config(raw_top, data_dir, "host")
  config.batch_size = batch_size
  return float(measure_train_throughput(config, batch_size))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", default="200000",
                 help="comma-separated sizes of generated logs (issue: 2600000,30000000)")
  p.add_argument("--workdir", default="/tmp/m3oe_bench_data")
  p.add_argument("--batch_size", type=int, default=40960)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--keep", action="store_true", help="keep generated raw files")
  p.add_argument("--skip_model", action="store_true")
  p.add_argument("--_child_prepare", nargs=2, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._child_prepare:  # pylint: disable=protected-access
    child_prepare(*args._child_prepare)  # pylint: disable=protected-access
    return
  workdir = pathlib.Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  sizes = [int(x) for x in args.rows.split(",")]
  results = []
  for i, rows in enumerate(sizes):
    keep = args.keep or i == 0  # the smallest is reused for the pipeline figures
    r = bench_prepare(rows, workdir, keep)
    results.append(r)
    print(f"prepare {rows:>12,} raw rows ({r['raw_bytes'] / 2**30:.2f} GiB CSV): "
          f"{r['seconds']:8.1f} s, {r['rows_per_s']:>10,.0f} rows/s, "
          f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB "
          f"(after imports {r['rss_after_imports_bytes'] / 2**30:.2f} GiB), "
          f"{r['rows_kept']:,} rows kept", flush=True)
    if i:
      shutil.rmtree(r["data_dir"], ignore_errors=True)
  first = results[0]
  raw_top = str(workdir / f"raw_{sizes[0]}" / "KuaiRand-Pure")
  pipe = bench_pipeline(raw_top, first["data_dir"], args.batch_size, args.steps)
  model = None if args.skip_model else model_throughput(raw_top, first["data_dir"],
                                                        args.batch_size)
  print(f"\ninput pipeline vs model, batch {args.batch_size}, same machine "
        f"({os.cpu_count()} CPUs):")
  print(f"  pipeline, columns in host memory : {pipe['host']:>14,.0f} rows/s")
  print(f"  pipeline, memory-mapped (stream) : {pipe['stream']:>14,.0f} rows/s")
  if model:
    print(f"  model training step             : {model:>14,.0f} examples/s")
    print(f"  ratio pipeline/model             : host {pipe['host'] / model:.1f}x, "
          f"stream {pipe['stream'] / model:.1f}x")
  else:
    print("  model training step             :  not measured")
  summary = {"prepare": results, "pipeline_rows_per_s": pipe,
             "model_examples_per_s": model, "batch_size": args.batch_size}
  (workdir / "bench_data.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
  main()
