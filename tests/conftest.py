import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def golden_path() -> pathlib.Path:
  path = pathlib.Path(os.environ.get("M3OE_GOLDEN", SHARED / "golden" / "m3oe_reference.npz"))
  if not path.exists():
    pytest.fail(f"golden file {path} not found (set M3OE_GOLDEN or provide ../shared)")
  return path
