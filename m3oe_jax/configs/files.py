"""M3oE on your own impression logs: a files dataset declared in `config.data.files`.

The default variant declares the small generated dataset shipped in
`m3oe_jax/data/testdata/files/` (4,000 impressions, a user and an item table;
`python -m m3oe_jax.data.fake_files` rewrites it), so it runs offline in
seconds; its numbers mean nothing. Copy this file and point the declaration at
your files.

The declaration, `config.data.files` (paths are local or anything
etils.epath opens, gs:// included; a glob names several files):

  logs          glob (or list of globs) of the impression logs: CSV, TSV,
                Parquet, or gzip-compressed CSV/TSV (`.gz`); one row per
                impression, CSV/TSV with a header line.
  format        "auto" (from the file name) | "csv" | "tsv" | "parquet".
  side_tables   list of tables joined to each log row by key, each
                {"name", "path" (glob), "key" (column or list of columns),
                "log_key" (the logs' columns, default: key), "columns" (what
                it adds; each must be declared as a feature below)}. Read
                whole into memory; a repeated or missing key is refused.
  unmatched     log rows whose key is not in a side table: "keep" (that
                table's features get no value: the OOV id, and 0 for a dense
                value) or "drop". Either way they are counted per table in the
                prepared schema's `source.checks.unmatched_side_rows` and in
                the log.
  categorical   {column: {"vocabulary": V}}: one id per row.
  multi_valued  {column: {"separator": "|", "max_values": 4, "vocabulary": V}}:
                up to max_values ids per row (more are dropped and counted),
                whose embeddings the model averages; empty values are skipped.
     V          {"mode": "train", "min_count": k} (default k = 1): ids from
                the training split; values seen fewer than k times there, and
                values never seen, get the OOV id 0. Or {"mode": "hash",
                "buckets": N}: id 1 + a stable keyed BLAKE2b hash mod N (the
                same in every process and machine), no vocabulary kept.
                Empty or missing values always get id 0.
  dense         {column: "minmax" | "standard" | "log"}: scaled with the
                training split's min/max or mean/std; "log" is log(1 + x) of
                values >= 0. A missing dense value in the logs is refused.
  domain        {"column": C, "values": {raw value: domain name}} (a value
                outside the map is refused) or {"column": C, "top_n": n} (the
                n most frequent values; other rows are dropped and counted).
                "as_feature" (default True) adds the domain index as the sparse
                feature "domain".
  tasks         {task: {"column": C, "rule": R}}, R: "binary" (the value, 0 or
                1; anything else is refused), "above" with "threshold": t
                (label = value > t) or "present" (a non-empty value).
  split         {"mode": "temporal", "column": time column, "ratios": [8,1,1]}
                (numbers, or ISO dates/timestamps; ties keep file order),
                {"mode": "random", "seed": s, "ratios": ...},
                {"mode": "column", "column": C, "values": {value: "train" |
                "validation" | "test"}} or {"mode": "files", "validation": glob,
                "test": glob} (then `logs` are the training logs).

Domain, label, time and split columns come from the logs; features from the
logs or a side table. Before any row is prepared every file's columns are
checked against the declaration; a bad value stops preparation at its file,
column and row, leaving nothing behind. Each declaration prepares once into its
own folder (`m3oe_files/files_<hash of the declaration>`); a changed file under
the same declaration is not noticed, so delete that folder (or change the
declaration) to prepare again.

Variants (`--config=configs/files.py:VARIANT`, optionally `,model=NAME`):
  default       the shipped dataset, temporal 8:1:1 split, train vocabularies.
  random_split  a seeded random 8:1:1 split.
  hashed        user and city ids hashed into buckets instead of vocabularies.
"""

import pathlib

import ml_collections

from m3oe_jax.config_utils import (add_paper_training, parse_arg, shrink_to_tiny,
                                   with_tuples)

TESTDATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "testdata" / "files"
VARIANTS = ("default", "random_split", "hashed")


def shipped_declaration(folder: pathlib.Path = TESTDATA) -> dict:
  """The declaration of the shipped dataset (in `folder`)."""
  train = {"mode": "train"}
  return {
      "logs": str(folder / "impressions.csv"),
      "format": "auto",
      "side_tables": [
          {"name": "users", "path": str(folder / "users.csv"), "key": "user_id",
           "columns": ["age", "gender", "city", "interests"]},
          {"name": "items", "path": str(folder / "items.csv"), "key": "item_id",
           "columns": ["category", "price", "tags"]},
      ],
      "unmatched": "keep",
      "categorical": {"user_id": {"vocabulary": train},
                      "item_id": {"vocabulary": {"mode": "train", "min_count": 2}},
                      "device": {}, "gender": {}, "city": {}, "category": {}},
      "multi_valued": {"tags": {"separator": "|", "max_values": 4},
                       "interests": {"separator": "|", "max_values": 3}},
      "dense": {"position": "log", "age": "minmax", "price": "standard"},
      "domain": {"column": "scenario",
                 "values": {"feed": "feed", "search": "search", "related": "related"}},
      "tasks": {"click": {"column": "click"},
                "long_view": {"column": "watch_seconds", "rule": "above", "threshold": 20},
                "comment": {"column": "comment", "rule": "present"}},
      "split": {"mode": "temporal", "column": "time", "ratios": [8, 1, 1]},
  }


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  words, options = parse_arg(arg, VARIANTS, ("model",), "configs/files.py")
  if len(words) > 1:
    raise ValueError(f"configs/files.py: pick one of {VARIANTS}, got {sorted(words)}")
  variant = words.pop() if words else "default"
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "files"
  config.data.data_dir = ""  # "": TFDS's default ($TFDS_DATA_DIR, else ~/tensorflow_datasets)
  files = shipped_declaration()
  if variant == "random_split":
    files["split"] = {"mode": "random", "seed": 0, "ratios": [8, 1, 1]}
  elif variant == "hashed":
    files["categorical"]["user_id"] = {"vocabulary": {"mode": "hash", "buckets": 512}}
    files["categorical"]["city"] = {"vocabulary": {"mode": "hash", "buckets": 64}}
  config.data.files = files
  config.data.placement = "auto"  # auto | host | stream | device
  config.data.max_host_bytes = 8 << 30
  config.data.chunk_rows = 1 << 20
  config.data.scratch_dir = ""

  add_paper_training(config, options.get("model", "m3oe"))
  shrink_to_tiny(config)
  return with_tuples(config)
