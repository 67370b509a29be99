"""The spill keeps every value: a narrowed int64 column widened when a block
does not fit int32; the .npy writer's CRC-32 is the file's."""

import zlib

import numpy as np

from m3oe_jax.data.raw.storage import NpyWriter, Spill


def test_narrow_column_keeps_values_and_widens(tmp_path):
  spill = Spill(str(tmp_path), {"sparse": (np.int64, 2), "time": (np.int64, 1)},
                narrow=("sparse",))
  blocks = [np.array([[0, -1], [5, 2**31 - 1]]), np.zeros((0, 2), np.int64),
            np.array([[-2**31, 7]])]
  for b in blocks:
    spill.append({"sparse": b, "time": np.arange(len(b))})
  cols = spill.close()
  assert cols["sparse"].dtype == np.int32  # every value fitted
  assert (cols["sparse"][0:3] == np.concatenate(blocks)).all()
  assert cols["time"].dtype == np.int64  # not named: as declared

  spill = Spill(str(tmp_path), {"sparse": (np.int64, 2)}, narrow=("sparse",))
  blocks.append(np.array([[2**40, -2**33], [1, 2]]))
  for b in blocks:
    spill.append({"sparse": b})
  cols = spill.close()
  assert cols["sparse"].dtype == np.int64
  assert (cols["sparse"][0:5] == np.concatenate(blocks)).all()
  assert (cols["sparse"][np.array([4, 0])] == np.concatenate(blocks)[[4, 0]]).all()


def test_npy_writer_crc_is_the_files(tmp_path):
  path = tmp_path / "a.npy"
  a = np.arange(12, dtype=np.float32).reshape(6, 2)
  w = NpyWriter(str(path), np.float32, (6, 2))
  w.append(a[:4])
  w.append(a[4:4])
  w.append(a[4:].astype(np.float64))
  w.close()
  data = path.read_bytes()
  assert w.record() == {"bytes": len(data), "crc32": f"{zlib.crc32(data):08x}"}
  assert (np.load(path) == a).all()
