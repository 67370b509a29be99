"""Checks that a change to preparation leaves the prepared files unchanged.

  python benchmarks/check_files_prepare_same.py --old_rev=HEAD~3
  python benchmarks/check_files_prepare_same.py --old_root=/path/to/old/checkout

Prepares the same declared files with the old code (a git revision, exported
with `git archive`, or a checkout) and with this checkout's, each in a fresh
process, and compares every file of the two prepared folders byte by byte
(the columnar `.npy` files, the vocabularies, the TFDS array_record shards,
`m3oe_schema.json` with its CRC-32s, dataset_info.json): the shipped dataset
of `configs/files.py` and its `hashed` and `random_split` variants, and a
generated dataset of --rows rows (--users users, --items items) in three
files, with the temporal and the random split. Exits 1 naming the first files that differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, logging, pathlib, sys
logging.disable(logging.WARNING)
from configs import files as files_config
from m3oe_jax.data import prepared
raw, data_dir, variant, generated = sys.argv[1:5]
config = files_config.get_config(variant)
files = files_config.shipped_declaration(pathlib.Path(raw))
if generated == "1":
  files["logs"] = str(pathlib.Path(raw) / "impressions-*")
if variant == "hashed":
  files["categorical"].update(config.data.files["categorical"].to_dict())
if variant == "random_split":
  files["split"] = config.data.files["split"].to_dict()
config.data.files = files
config.data.data_dir = data_dir
config.data.chunk_rows = int(sys.argv[5])
builder = prepared.prepare(config.data)
print("FOLDER " + str(builder.data_path))
"""


def generate(raw: pathlib.Path, rows: int, users: int, items: int) -> None:
  sys.path.insert(0, str(REPO))
  import pyarrow.csv as pa_csv  # pylint: disable=g-import-not-at-top
  from m3oe_jax.data import fake_files  # pylint: disable=g-import-not-at-top
  raw.mkdir(parents=True)
  pa_csv.write_csv(fake_files.users_table(users), str(raw / "users.csv"))
  pa_csv.write_csv(fake_files.items_table(items), str(raw / "items.csv"))
  per_file = -(-rows // 3)
  for b in range(3):
    n = min(per_file, rows - b * per_file)
    fake_files.write_csv(fake_files.impression_block(b, n, users, items),
                         raw / f"impressions-{b:05d}.csv")


def prepare(root: pathlib.Path, raw: str, data_dir: str, variant: str, generated: bool,
            chunk_rows: int) -> pathlib.Path:
  env = {**os.environ, "PYTHONPATH": str(root)}
  out = subprocess.run([sys.executable, "-c", _CHILD, raw, data_dir, variant,
                        "1" if generated else "0", str(chunk_rows)],
                       capture_output=True, text=True, cwd=str(root), env=env, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith("FOLDER ")]
  if out.returncode or not lines:
    print(out.stdout[-2000:], out.stderr[-4000:])
    sys.exit(f"preparing with {root} failed")
  return pathlib.Path(lines[-1][len("FOLDER "):])


def digests(folder: pathlib.Path) -> dict[str, str]:
  """SHA-256 of every file; of a TFDS shard, of its records, each a tf.Example
  serialized again deterministically (a shard's bytes are not: protobuf writes
  an Example's feature map in no fixed order)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for p in sorted(folder.rglob("*")):
    if not p.is_file():
      continue
    h = hashlib.sha256()
    if ".array_record-" in p.name:
      reader = array_record_module.ArrayRecordReader(str(p))
      for record in reader.read_all():
        h.update(tf_example_pb2.Example.FromString(record).SerializeToString(
            deterministic=True))
      reader.close()
    else:
      h.update(p.read_bytes())
    out[str(p.relative_to(folder))] = h.hexdigest()
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--old_rev", default="", help="git revision of the old code")
  parser.add_argument("--old_root", default="", help="a checkout of the old code")
  parser.add_argument("--rows", type=int, default=200_000)
  parser.add_argument("--users", type=int, default=20_000)
  parser.add_argument("--items", type=int, default=5_000)
  parser.add_argument("--keep", action="store_true", help="keep the prepared folders")
  parser.add_argument("--chunk_rows", type=int, default=1 << 16,
                      help="rows handled at once (small: many chunks even at 200k rows)")
  args = parser.parse_args()
  if bool(args.old_rev) == bool(args.old_root):
    sys.exit("give one of --old_rev, --old_root")
  work = pathlib.Path(tempfile.mkdtemp(prefix="m3oe-same-"))
  try:
    old = pathlib.Path(args.old_root) if args.old_root else work / "old"
    if args.old_rev:
      old.mkdir()
      archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old_rev],
                               capture_output=True, check=True).stdout
      subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    raw, shipped = work / "raw", work / "shipped"
    generate(raw, args.rows, args.users, args.items)
    from m3oe_jax.data import fake_files  # pylint: disable=g-import-not-at-top
    shutil.copytree(fake_files.TESTDATA, shipped)
    cases = [("shipped", "default", False), ("shipped hashed", "hashed", False),
             ("shipped random_split", "random_split", False),
             (f"generated {args.rows:,} rows", "default", True),
             (f"generated {args.rows:,} rows random_split", "random_split", True)]
    bad = 0
    for name, variant, generated in cases:
      found = {}
      for who, root in (("old", old), ("new", REPO)):
        data_dir = work / f"tfds-{who}"
        shutil.rmtree(data_dir, ignore_errors=True)
        folder = prepare(root, str(raw if generated else shipped), str(data_dir), variant,
                         generated, args.chunk_rows)
        found[who] = digests(folder)
      a, b = found["old"], found["new"]
      differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
      schema = json.loads((folder / "m3oe_schema.json").read_text())
      rows = sum(schema["source"]["num_rows"].values())
      print(f"{name}: {rows:,} rows, {len(b)} files: "
            + ("identical" if not differ else f"{len(differ)} differ: {differ[:8]}"))
      bad += bool(differ)
    sys.exit(1 if bad else 0)
  finally:
    if args.keep:
      print(f"kept {work}")
    else:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
