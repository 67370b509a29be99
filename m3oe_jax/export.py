"""Exports a trained model for serving: `python -m m3oe_jax.export --workdir=DIR --out=DIR`.

Writes two files into the folder `--out` (created if missing; in an existing
folder only these two files are replaced):

  predict.jaxexport  `jax.export.export(jax.jit(predict)).serialize()`: a
                     StableHLO module of `predict(batch) -> probabilities [b, T]`
                     with the checkpoint's variables baked in as constants and a
                     symbolic batch size `b`. `batch` is the model interface's
                     dict {'sparse': int32 [b, S], 'dense': float32 [b, Q],
                     'domain': int32 [b]} of MODEL ids and scaled dense values.
                     Serve it with jax alone (no m3oe_jax, no flax):

                       exp = jax.export.deserialize(bytearray(open(path, 'rb').read()))
                       probs = exp.call({'sparse': ..., 'dense': ..., 'domain': ...})

  schema.json        what turns raw rows into that batch: per sparse feature its
                     mode and vocabulary (raw value -> model id) and
                     out-of-vocabulary id, or its hash (mode 'hash': no
                     vocabulary), and its columns (several for a multi-valued one),
                     per dense feature its transform and min-max scaling, the
                     domain and task names (model domain id = position), the
                     input and output shapes, and the feature schema itself.
                     For synthetic data the ids already are model ids
                     (`"ids": "model_ids"`, no vocabularies).

The vocabularies are those the data was prepared with
(`<prepared dir>/vocab/<feature>.npy`, position i holding the raw value of model
id i + 1; id 0 is the OOV id); they are found from the checkpoint's data config
(`--data_dir` overrides where the prepared data lives).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from m3oe_jax.errors import ConfigError, MissingCheckpointError

SCHEMA_VERSION = 1
PREDICT_FILE = "predict.jaxexport"
SCHEMA_FILE = "schema.json"
# The platforms `jax.export` lowers for.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

# How each prepared dataset transforms a dense value before its min-max scaling.
_DENSE_TRANSFORMS = {
    "movielens": "identity",
    "kuairand": "log1p_of_nonnegative",  # log1p(max(x, 0))
}


def make_predict(model, variables):
  """predict(batch) -> probabilities [B, T]: eval mode, `variables` closed over."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def predict(batch):
    full = {"sparse": batch["sparse"], "dense": batch["dense"], "domain": batch["domain"],
            "mask": jnp.ones(batch["domain"].shape, jnp.float32)}
    logits, _ = model.apply(variables, full, train=False)
    return jax.nn.sigmoid(logits)

  return predict


def export_predict(model, variables, schema, platforms: tuple[str, ...] | None = None):
  """The `jax.export.Exported` predict function with a symbolic batch size."""
  import jax  # pylint: disable=g-import-not-at-top
  b, = jax.export.symbolic_shape("b")
  spec = {
      "sparse": jax.ShapeDtypeStruct((b, schema.sparse_width), np.int32),
      "dense": jax.ShapeDtypeStruct((b, schema.num_dense), np.float32),
      "domain": jax.ShapeDtypeStruct((b,), np.int32),
  }
  variables = jax.device_get(variables)  # constants, whatever device they were on
  fn = jax.jit(make_predict(model, variables))
  return jax.export.export(fn, platforms=platforms)(spec)


def _dense_transform(dataset: str) -> str:
  for prefix, transform in _DENSE_TRANSFORMS.items():
    if dataset.startswith(prefix):
      return transform
  return "unknown"


def _vocab_dir(config, data_dir: str | None) -> str:
  from m3oe_jax.data import prepared  # pylint: disable=g-import-not-at-top
  from m3oe_jax.data.raw import storage  # pylint: disable=g-import-not-at-top
  data_config = config.data
  if data_dir:
    data_config = data_config.copy_and_resolve_references()
    data_config.data_dir = data_dir
  builder = prepared.make_builder(data_config)
  return os.path.join(os.fspath(builder.data_path), storage.VOCAB_DIR)


def read_vocabularies(config, schema, data_dir: str | None = None) -> dict[str, np.ndarray]:
  """{feature: raw values}, model id of values[i] being i + 1, from the prepared data."""
  path = _vocab_dir(config, data_dir)
  vocabs = {}
  modes = schema.source.get("sparse_vocabularies") or {}
  for name, size in zip(schema.sparse_names, schema.vocab_sizes):
    if (modes.get(name) or {}).get("mode") == "hash":
      continue  # hashed: no vocabulary, serving hashes the value
    file = os.path.join(path, name + ".npy")
    if not os.path.exists(file):
      raise FileNotFoundError(
          f"no vocabulary {file} for sparse feature {name!r}: the prepared data of the "
          "checkpoint's config is not here; prepare it (python -m m3oe_jax.data.prepared "
          "--config=...) or pass --data_dir=<where it was prepared>")
    values = np.load(file, allow_pickle=False)
    if len(values) + 1 != size:
      raise ValueError(f"{file}: {len(values)} values + the OOV id, but the checkpoint's "
                       f"schema has vocab size {size} for {name!r}; the prepared data no "
                       "longer matches the checkpoint")
    vocabs[name] = values
  return vocabs


def _raw_key(value) -> str:
  return str(value.item() if isinstance(value, np.generic) else value)


def serving_schema(config, schema, *, which: str, step: int | None,
                   data_dir: str | None = None) -> dict[str, Any]:
  """The contents of schema.json (see the module doc)."""
  source = dict(schema.source)
  b = "b"
  out: dict[str, Any] = {
      "version": SCHEMA_VERSION,
      "model": config.model.name,
      "checkpoint": {"which": which, "step": step},
      "inputs": {
          "sparse": {"dtype": "int32", "shape": [b, schema.sparse_width],
                     "columns": list(schema.sparse_columns)},
          "dense": {"dtype": "float32", "shape": [b, schema.num_dense],
                    "columns": list(schema.dense_names)},
          "domain": {"dtype": "int32", "shape": [b], "values": list(schema.domain_names)},
      },
      "outputs": {"probabilities": {"dtype": "float32", "shape": [b, schema.num_tasks],
                                    "columns": list(schema.task_names)}},
      "domains": list(schema.domain_names),
      "tasks": list(schema.task_names),
      "feature_schema": json.loads(schema.to_json()),
  }
  if config.data.name == "synthetic":
    out["ids"] = "model_ids"
    out["note"] = ("synthetic data: the sparse ids are already model ids in [0, vocab_size) "
                   "and the dense values are fed as they are; there are no vocabularies")
    out["oov_id"] = None
    out["sparse_features"] = [{"name": n, "vocab_size": v, "oov_id": None, "vocabulary": None}
                              for n, v in zip(schema.sparse_names, schema.vocab_sizes)]
    out["dense_features"] = [{"name": n, "transform": "identity", "scaling": None}
                             for n in schema.dense_names]
    return out
  oov = int(source.get("oov_id", 0))
  vocabs = read_vocabularies(config, schema, data_dir)
  out["ids"] = "vocabulary"
  # The raw value of a sparse feature named 'domain' is the domain's index among
  # the prepared data's domains (a variant run may keep, and renumber, fewer).
  out["prepared_domains"] = list(source.get("counts", {}).get("train", {})) or list(
      schema.domain_names)
  out["note"] = ("map each raw sparse value through its feature's vocabulary; a value not "
                 "in it gets the feature's oov_id. Dense: x -> (transform(x) - min) / span "
                 "with span = max - min (1 where max == min)")
  out["oov_id"] = oov
  modes = source.get("sparse_vocabularies") or {}
  out["sparse_features"] = []
  for n, v, width in zip(schema.sparse_names, schema.vocab_sizes, schema.widths):
    mode = dict(modes.get(n) or {"mode": source.get("vocabulary", "train")})
    feature = {"name": n, "vocab_size": int(v), "oov_id": oov, "width": int(width),
               "mode": mode.pop("mode"), **mode}
    if n in vocabs:
      feature["value_kind"] = "str" if vocabs[n].dtype.kind in "US" else "int"
      feature["vocabulary"] = {_raw_key(x): i + 1 for i, x in enumerate(vocabs[n].tolist())}
    else:
      feature["vocabulary"] = None
    out["sparse_features"].append(feature)
  out["dense_features"] = [_dense_feature(n, source, config) for n in schema.dense_names]
  return out


def _dense_feature(name: str, source, config) -> dict[str, Any]:
  """A dense feature's transform and scaling, as preparation recorded them."""
  record = (source.get("dense_scaling") or {}).get(name)
  if record is None:  # the paper datasets: min-max after a fixed transform
    lo, hi = float(source["dense_min"][name]), float(source["dense_max"][name])
    return {"name": name,
            "transform": _dense_transform(str(source.get("dataset", config.data.name))),
            "scaling": {"kind": "min_max", "min": lo, "max": hi,
                        "span": hi - lo if hi > lo else 1.0}}
  scaling = None
  if record["scaling"] == "minmax":
    scaling = {"kind": "min_max", "min": record["min"], "span": record["span"]}
  elif record["scaling"] == "standard":
    scaling = {"kind": "standard", "mean": record["mean"], "std": record["std"]}
  return {"name": name, "transform": record.get("transform") or "identity",
          "scaling": scaling, "missing": record.get("missing")}


def encode_rows(serving: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """The model batch of raw rows ({feature: raw value, dense name: raw value,
  'domain': domain name or id}) through the schema.json vocabularies; unseen
  values get the OOV id. A sparse feature named 'domain' takes the row's
  'domain' (a name is turned into its prepared index). Uses numpy only, like a
  serving client would."""
  widths = [f.get("width", 1) for f in serving["sparse_features"]]
  sparse = np.zeros((len(rows), sum(widths)), np.int32)
  first = 0
  for f, width in zip(serving["sparse_features"], widths):
    for i, row in enumerate(rows):
      value = row[f["name"]]
      if f["name"] == "domain" and str(value) in serving.get("prepared_domains", ()):
        value = serving["prepared_domains"].index(str(value))  # a domain given by name
      values = [value]
      if width > 1:
        values = value.split(f["separator"]) if isinstance(value, str) else list(value)
        values = [v for v in values if v != ""][:width]
      for k, v in enumerate(values):
        sparse[i, first + k] = _model_id(f, v)
    first += width
  dense = np.zeros((len(rows), len(serving["dense_features"])), np.float32)
  for j, f in enumerate(serving["dense_features"]):
    for i, row in enumerate(rows):
      x = float(row[f["name"]])
      if f["transform"] == "log1p_of_nonnegative":
        x = float(np.log1p(max(x, 0.0)))
      elif f["transform"] == "log1p":
        x = float(np.log1p(x))
      if f["scaling"] and f["scaling"]["kind"] == "standard":
        x = (x - f["scaling"]["mean"]) / f["scaling"]["std"]
      elif f["scaling"]:
        x = (x - f["scaling"]["min"]) / f["scaling"]["span"]
      dense[i, j] = x
  domains = serving["domains"]
  domain = np.array([domains.index(str(r["domain"])) if str(r["domain"]) in domains
                     else int(r["domain"]) for r in rows], np.int32)
  return {"sparse": sparse, "dense": dense, "domain": domain}


def _model_id(feature: dict[str, Any], value) -> int:
  """A raw value's model id under its feature's mode; "" or None is no value."""
  if feature.get("mode") == "hash":
    if value is None or value == "":
      return 0
    from m3oe_jax.data.raw import hashing  # pylint: disable=g-import-not-at-top
    return int(hashing.hashed_ids([_raw_key(value)], feature["buckets"])[0])
  if feature["vocabulary"] is None:
    return int(value)
  return feature["vocabulary"].get(_raw_key(value), feature["oov_id"])


def check_platforms(platforms: tuple[str, ...] | None) -> None:
  """Refuses platforms `jax.export` does not lower for, or one named twice."""
  if platforms is None:
    return
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown or len(set(platforms)) != len(platforms):
    raise ConfigError(f"--platforms={','.join(platforms)}: "
                      + (f"unknown platforms {unknown}" if unknown else "a platform is repeated")
                      + f"; give a comma-separated list of {', '.join(PLATFORMS)} (empty: "
                      "this machine's default backend)")


def check_out(out: str) -> None:
  """Refuses an `--out` that cannot be the export's folder: an existing file,
  a folder holding something other than a file where an export file goes, or
  a path under a file or in a folder that cannot be written. An existing folder
  is fine: only the export's two files in it are replaced."""
  from m3oe_jax import paths  # pylint: disable=g-import-not-at-top
  if paths.is_url(out):
    return
  folder = os.fspath(paths.resolve(out))
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise ConfigError(f"--out={out} exists and is not a folder; --out names the folder to "
                      f"write {PREDICT_FILE} and {SCHEMA_FILE} into (created if missing)")
  for name in (PREDICT_FILE, SCHEMA_FILE):
    path = os.path.join(folder, name)
    if os.path.lexists(path) and not os.path.isfile(path):
      raise ConfigError(f"--out={out}: {path} exists and is not a file; move it away or "
                        "choose another --out")
  ancestor = folder
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise ConfigError(f"--out={out}: {ancestor} is a file, so the folder cannot be created")
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise ConfigError(f"--out={out}: cannot write in {ancestor}")


def export_checkpoint(workdir: str, out: str, which: str = "best",
                      platforms: tuple[str, ...] | None = None,
                      data_dir: str | None = None) -> dict[str, str]:
  """Writes predict.jaxexport and schema.json of `workdir`'s checkpoint into `out`."""
  from m3oe_jax import params_io, paths  # pylint: disable=g-import-not-at-top
  from m3oe_jax.models import build_model  # pylint: disable=g-import-not-at-top
  check_out(out)
  check_platforms(platforms)
  if not params_io.saved_steps(workdir, which):
    raise FileNotFoundError(f"no {which} checkpoint under {paths.resolve(workdir) / 'checkpoints'}"
                            f": nothing to export (train first, or pick --which=latest)")
  step, (variables, schema, config) = params_io.read_newest(
      workdir, which, lambda s: params_io.load_params(workdir, which, s))
  model = build_model(config.model, schema)
  serving = serving_schema(config, schema, which=which, step=step, data_dir=data_dir)
  exported = export_predict(model, variables, schema, platforms)
  serving["platforms"] = list(exported.platforms)
  blob = exported.serialize()
  folder = paths.resolve(out)
  if not paths.is_url(folder):  # an object store has no folders to make
    folder.mkdir(parents=True, exist_ok=True)
  (folder / PREDICT_FILE).write_bytes(blob)
  (folder / SCHEMA_FILE).write_text(json.dumps(serving, indent=1, sort_keys=False))
  return {"predict": str(folder / PREDICT_FILE), "schema": str(folder / SCHEMA_FILE)}


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  platforms = tuple(p.strip() for p in f.platforms.split(",") if p.strip()) or None
  try:
    paths = export_checkpoint(f.workdir, f.out, f.which, platforms, f.data_dir or None)
  except FileNotFoundError as e:
    raise MissingCheckpointError(str(e)) from None
  print(f"wrote {paths['predict']} and {paths['schema']}")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  from m3oe_jax import cli  # pylint: disable=g-import-not-at-top  (defines --workdir)
  flags.DEFINE_string("out", None, "Where to write predict.jaxexport and schema.json.")
  flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint.")
  flags.DEFINE_string("platforms", "", "Comma-separated platforms to lower for "
                      "(cpu, cuda, rocm, tpu); empty: this machine's default backend.")
  flags.DEFINE_string("data_dir", "", "Where the data was prepared, if not the "
                      "checkpoint's config.data.data_dir (for the vocabularies).")
  flags.mark_flags_as_required(["workdir", "out"])
  cli.run(main)
