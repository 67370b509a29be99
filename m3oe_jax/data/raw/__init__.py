"""Preparing a dataset from its raw files, without ever holding them in memory.

The dataset modules (`data/datasets/movielens.py`, `kuairand.py`, `files.py`)
know only their formats; this package does everything else:

  settings.py  the preparation settings' checks and their hash
  sources.py   finding the raw archive or folder, checksums, download reachability
  text.py      delimited text read in blocks, every value checked
  encode.py    string codes, id tables, vocabularies, the encoding of every split
  storage.py   spill files, columnar `.npy` files, a prepared folder's layout
  splits.py    temporal, random and file-order splits
  prepare.py   `prepare()`: ingest, split, statistics, encode, in named stages
  lock.py      one preparation per dataset folder, and what a dead one left
  builder.py   the TFDS builder the datasets share (the package's only TFDS import)

and, for the files dataset (`config.data.files`, the user's own logs):

  declaration.py  the declaration checked into dataclasses
  tables.py       globs, formats (CSV, TSV, Parquet, gzip), record batches
  roles.py        a column converted by its role, bad values named by row
  side_tables.py  side tables joined to log rows by key
  hashing.py      the stable hash of hashed vocabularies

Errors about the raw input are the two classes below, which name the file, the
line and the column, or what to download and where to put it.
"""

from m3oe_jax.errors import UserError


class RawDataError(UserError, ValueError):
  """The raw input is malformed; the message names the file, line and column."""


class RawSourceNotFoundError(UserError, FileNotFoundError):
  """No raw data was found; the message says what to download and where to put it."""
