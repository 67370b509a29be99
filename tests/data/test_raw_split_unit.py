"""The streaming split and column helpers against brute force."""

import numpy as np
import pytest

from m3oe_jax.data.raw import RawDataError, RawSourceNotFoundError, sources, splits, storage


@pytest.mark.parametrize("seed", range(4))
def test_temporal_assignment_matches_a_full_sort(seed, tmp_path):
  rng = np.random.default_rng(seed)
  n = 5000
  # few distinct times (many ties at the cuts) on a huge range
  time = rng.choice(rng.integers(0, 2**50, 40), n)
  user = rng.integers(0, 30, n)
  item = rng.integers(0, 30, n)
  sizes = splits.split_sizes(n, [8, 1, 1])
  spill = storage.Spill(str(tmp_path), {"time": (np.int64, 1), "user": (np.int64, 1),
                                        "item": (np.int64, 1)})
  spill.append({"time": time, "user": user, "item": item})
  cols = spill.close()
  got = splits.temporal_assignment(cols["time"], cols["user"], cols["item"], sizes, chunk=700)
  order = np.lexsort((np.arange(n), item, user, time))
  want = np.empty(n, np.uint8)
  want[order] = np.repeat([0, 1, 2], sizes)
  np.testing.assert_array_equal(got, want)


def test_kth_smallest_and_random_assignment():
  rng = np.random.default_rng(0)
  v = rng.integers(-2**60, 2**60, 3001)
  s = np.sort(v)
  for k in (0, 1, 1500, 3000):
    assert splits._kth_smallest(v, k, chunk=128) == s[k]
  part = splits.random_assignment(1000, (800, 100, 100), seed=5)
  assert np.bincount(part).tolist() == [800, 100, 100]
  np.testing.assert_array_equal(part, splits.random_assignment(1000, (800, 100, 100), seed=5))
  assert not np.array_equal(part, splits.random_assignment(1000, (800, 100, 100), seed=6))


def test_flat_column_reads(tmp_path):
  a = np.arange(30, dtype=np.int32).reshape(10, 3)
  w = storage.NpyWriter(str(tmp_path / "a.npy"), np.int32, (10, 3))
  w.append(a[:4])
  w.append(a[4:])
  w.close()
  np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), a)
  col = storage.npy_column(str(tmp_path / "a.npy"))
  np.testing.assert_array_equal(col[2:7], a[2:7])
  np.testing.assert_array_equal(col[np.array([9, 0, 4])], a[[9, 0, 4]])


def test_download_path_verifies_and_explains(tmp_path):
  f = tmp_path / "x.tar.gz"
  f.write_bytes(b"archive bytes")
  md5 = "md5:" + sources.file_checksum(f, "md5")
  spec = sources.ArchiveSpec("https://example.org/x.tar.gz", "x.tar.gz", md5, "X")
  opts = sources.SourceOptions(manual_dir=str(tmp_path / "manual"))
  src = sources.resolve_source(spec, opts, download_fn=lambda url: str(f))
  assert src.kind == "archive" and src.checksum == md5
  bad = sources.ArchiveSpec(spec.url, spec.filename, "md5:" + "1" * 32, "X")
  with pytest.raises(RawDataError, match="checksum mismatch"):
    sources.resolve_source(bad, opts, download_fn=lambda url: str(f))

  def offline(url):
    raise OSError("network is unreachable")
  with pytest.raises(RawSourceNotFoundError,
                     match=r"downloading https://example.org/x.tar.gz failed .*network is "
                           r"unreachable.*put x.tar.gz in .*manual"):
    sources.resolve_source(spec, opts, download_fn=offline)
