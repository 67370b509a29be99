"""Scores new raw rows with a trained run:
`python -m m3oe_jax.predict --workdir=DIR --logs=GLOB --output=FILE`.

For runs on a files dataset (`config.data.name="files"`). The rows are log
files in the run's declared format (`config.data.files`: CSV, TSV, Parquet,
gzip; a glob, or several separated by commas), joined with the declared side
tables (`--side_tables=NAME=GLOB,...` replaces some), and encoded with the
prepared dataset's vocabularies, hashing and scaling (`data/raw/new_rows.py`;
nothing is fitted again), then scored by the checkpoint (`--which`). A value
never seen in training gets the OOV id; label, time and split columns are not
read. Rows stream in record batches of about `--batch_rows`, so memory does
not grow with the number of rows.

The output (`--output`: Parquet for `.parquet`/`.pq`, CSV for `.csv`, TSV for
`.tsv`) holds one line per scored row, in input order: the `--keys` columns of
the logs, `domain` (its name) and `p_<task>` per task. A row whose domain the
model does not have is refused naming its file and row
(`--unknown_domain=refuse`), or left out and counted (`skip`). The file is
written as `<output>.partial` and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

import numpy as np

from m3oe_jax.errors import ConfigError

UNKNOWN_DOMAIN_POLICIES = ("refuse", "skip")
DEFAULT_BATCH_ROWS = 4096


@dataclasses.dataclass
class Summary:
  output: str
  rows: int  # scored and written
  skipped_unknown_domain: int
  unmatched_side_rows: dict[str, int]
  seconds: float

  def line(self) -> str:
    unmatched = ", ".join(f"{k}: {v:,}" for k, v in self.unmatched_side_rows.items())
    return (f"wrote {self.rows:,} rows to {self.output} in {self.seconds:.1f} s; "
            f"skipped {self.skipped_unknown_domain:,} rows of an unknown domain"
            + (f"; rows without a side-table match (scored with no value) {unmatched}"
               if unmatched else ""))


def parse_side_tables(text: str) -> dict[str, str]:
  """`NAME=GLOB,NAME=GLOB` as a dict."""
  out = {}
  for item in filter(None, (p.strip() for p in text.split(","))):
    name, eq, glob = item.partition("=")
    if not eq or not name or not glob:
      raise ConfigError(f"--side_tables={text}: {item!r} is not NAME=GLOB")
    out[name] = glob
  return out


def predict_files(workdir: str, logs: Sequence[str], output: str, *, which: str = "best",
                  keys: Sequence[str] = (), unknown_domain: str = "refuse",
                  batch_rows: int = DEFAULT_BATCH_ROWS, data_dir: str | None = None,
                  side_tables: dict[str, str] | None = None) -> Summary:
  """Scores the rows of the `logs` globs with `workdir`'s checkpoint into `output`."""
  from m3oe_jax import params_io, prediction_output  # pylint: disable=g-import-not-at-top
  from m3oe_jax.data.raw import roles, tables  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  if unknown_domain not in UNKNOWN_DOMAIN_POLICIES:
    raise ConfigError(f"--unknown_domain={unknown_domain}: pick one of "
                      f"{', '.join(UNKNOWN_DOMAIN_POLICIES)}")
  if batch_rows < 1:
    raise ConfigError(f"--batch_rows={batch_rows} must be at least 1")
  writer_format = prediction_output.output_format(output)
  _, (variables, schema, config) = params_io.read_newest(
      workdir, which, lambda s: params_io.load_params(workdir, which, s))
  if config.data.name != "files":
    raise ConfigError(
        f"--workdir={workdir} was trained on config.data.name={config.data.name!r}; predict "
        "scores rows of a files dataset only (config.data.name='files'); evaluate this run "
        "with python -m m3oe_jax.evaluate, or serve it with python -m m3oe_jax.export")
  d = _declaration(config, logs, side_tables or {})
  encoder = new_rows_encoder(config, d, schema, data_dir, batch_rows)
  taken = ["domain"] + [f"p_{t}" for t in schema.task_names]
  clash = [k for k in keys if k in taken]
  if clash:
    raise ConfigError(f"--keys: {clash[0]!r} is also an output column ({', '.join(taken)}); "
                      "rename it in the logs or leave it out of --keys")
  paths = _expand(logs)
  from m3oe_jax.data.datasets import files as files_dataset  # pylint: disable=g-import-not-at-top
  columns = list(dict.fromkeys(d.feature_columns() + list(keys)))
  text = files_dataset.check_headers(d, paths, columns, d.format)
  score = _scorer(schema, config, variables, batch_rows)
  skipped = rows = 0
  with prediction_output.Writer(output, writer_format, keys, schema.task_names) as out:
    for path in paths:
      for first, batch in tables.batches(path, d.format, columns, batch_rows):
        place = roles.Place(path, first, text[path])
        encoded = encoder.encode(batch, place)
        if not encoded.known.all():
          if unknown_domain == "refuse":
            _refuse_domain(batch, encoded.known, place, d.domain.column, schema.domain_names)
          skipped += int(np.count_nonzero(~encoded.known))
          keep = np.flatnonzero(encoded.known)
          batch = batch.take(keep)
          encoded.inputs = {k: v[keep] for k, v in encoded.inputs.items()}
        probs = score(encoded.inputs)
        out.write(batch, np.asarray(schema.domain_names)[encoded.inputs["domain"]], probs,
                  place)
        rows += batch.num_rows
  return Summary(os.fspath(output), rows, skipped,
                 {j.spec.name: j.unmatched_rows for j in encoder.joined},
                 time.perf_counter() - start)


def _declaration(config, logs: Sequence[str], side_tables: dict[str, str]):
  """The run's declaration, reading `logs`, with the side tables `side_tables` names."""
  from m3oe_jax.data.raw import declaration  # pylint: disable=g-import-not-at-top
  d = declaration.parse(config.data.files)
  names = [t.name for t in d.side_tables]
  unknown = sorted(set(side_tables) - set(names))
  if unknown:
    raise ConfigError(f"--side_tables: the run declares no side table {unknown[0]!r}; its "
                      f"side tables are {names}")
  return dataclasses.replace(
      d, logs=tuple(logs),
      side_tables=tuple(dataclasses.replace(t, path=side_tables.get(t.name, t.path))
                        for t in d.side_tables))


def _expand(logs: Sequence[str]) -> list[str]:
  from m3oe_jax.data.raw import tables  # pylint: disable=g-import-not-at-top
  found = [p for glob in logs for p in tables.expand(glob, "--logs")]
  return list(dict.fromkeys(found))


def new_rows_encoder(config, d, schema, data_dir: str | None, chunk_rows: int):
  """The NewRows encoder of the run's prepared dataset."""
  from m3oe_jax import export  # pylint: disable=g-import-not-at-top
  from m3oe_jax.data import prepared  # pylint: disable=g-import-not-at-top
  from m3oe_jax.data.raw import new_rows  # pylint: disable=g-import-not-at-top
  data_config = config.data.copy_and_resolve_references()
  if data_dir:
    data_config.data_dir = data_dir
  builder = prepared.make_builder(data_config)
  if not prepared.is_prepared(builder):
    raise ConfigError(
        f"the run's prepared data is not at {os.fspath(builder.data_path)}: its vocabularies "
        "and scaling are needed; pass --data_dir=<where it was prepared>, or prepare the "
        "run's config again (python -m m3oe_jax.data.prepared --config=...)")
  prepared_schema = prepared.read_schema(builder)
  vocabularies = export.read_vocabularies(config, prepared_schema, data_dir)
  return new_rows.NewRows(d, prepared_schema, schema, vocabularies, chunk_rows)


def _refuse_domain(batch, known, place, column: str, domains) -> None:
  from m3oe_jax.data.raw import RawDataError, roles  # pylint: disable=g-import-not-at-top
  i = int(np.flatnonzero(~known)[0])
  value = roles.as_text(batch.column(column))[i].as_py()
  raise RawDataError(f"{place.at(i, column)}: {value!r} is not a domain of the model "
                     f"({', '.join(domains)}); pass --unknown_domain=skip to leave such rows "
                     "out (they are counted)")


def _scorer(schema, config, variables, batch_rows: int):
  """inputs of n rows -> probabilities [n, T], in model batches of `batch_rows`
  (the last padded), so one shape is compiled."""
  import jax  # pylint: disable=g-import-not-at-top
  from m3oe_jax import step  # pylint: disable=g-import-not-at-top
  from m3oe_jax.models import build_model  # pylint: disable=g-import-not-at-top
  eval_step = jax.jit(step.make_eval_step(build_model(config.model, schema)))

  def score(inputs: dict[str, np.ndarray]) -> np.ndarray:
    n = len(inputs["domain"])
    out = [np.zeros((0, schema.num_tasks), np.float32)]
    for s in range(0, n, batch_rows):
      part = {k: v[s:s + batch_rows] for k, v in inputs.items()}
      m = len(part["domain"])
      padded = {k: np.concatenate([v, np.zeros((batch_rows - m,) + v.shape[1:], v.dtype)])
                for k, v in part.items()}
      padded["mask"] = (np.arange(batch_rows) < m).astype(np.float32)
      probs, _ = eval_step(variables, padded)
      out.append(np.asarray(probs, np.float32)[:m])
    return np.concatenate(out)

  return score


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from m3oe_jax import cli  # pylint: disable=g-import-not-at-top
  cli.start(argv)
  f = flags.FLAGS
  summary = predict_files(
      f.workdir, [g.strip() for g in f.logs.split(",") if g.strip()], f.output,
      which=f.which, keys=[k.strip() for k in f.keys.split(",") if k.strip()],
      unknown_domain=f.unknown_domain, batch_rows=f.batch_rows, data_dir=f.data_dir or None,
      side_tables=parse_side_tables(f.side_tables))
  print(summary.line())


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  from m3oe_jax import cli  # pylint: disable=g-import-not-at-top  (defines --workdir)
  flags.DEFINE_string("logs", None, "Glob(s) of the log files to score, comma-separated.")
  flags.DEFINE_string("output", None, "The scores' file: .parquet, .pq, .csv or .tsv.")
  flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint.")
  flags.DEFINE_string("keys", "", "Comma-separated log columns copied into the output.")
  flags.DEFINE_enum("unknown_domain", "refuse", list(UNKNOWN_DOMAIN_POLICIES),
                    "A row whose domain the model lacks: refuse (stop, naming it) or skip "
                    "(leave it out, counted).")
  flags.DEFINE_integer("batch_rows", DEFAULT_BATCH_ROWS, "Rows read and scored at a time.")
  flags.DEFINE_string("data_dir", "", "Where the run's data was prepared, if not its "
                      "config.data.data_dir (for the vocabularies and scaling).")
  flags.DEFINE_string("side_tables", "", "NAME=GLOB,...: side tables read instead of the "
                      "declared ones (e.g. a newer users table).")
  flags.mark_flags_as_required(["workdir", "logs", "output"])
  cli.run(main)
