"""Paths the user gives: local folders (relative or with `~`) and URLs alike."""

from __future__ import annotations

import os

from etils import epath


def is_url(path: str | os.PathLike) -> bool:
  """Whether `path` names a remote location (`gs://...`, `s3://...`)."""
  return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> epath.Path:
  """`path` as an absolute `epath.Path`: `~` expanded and a relative local path
  made absolute against the working directory (orbax and TensorStore need
  absolute paths); a URL is kept as it is."""
  text = os.fspath(path)
  if is_url(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))
