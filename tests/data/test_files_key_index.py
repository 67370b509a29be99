"""The lasting key index of side-table joins and string coding: exactly
`pyarrow.compute.index_in`'s answer, whatever the strings, and codes in order
of first appearance."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from m3oe_jax.data.raw import key_index
from m3oe_jax.data.raw.encode import ArrowStringCoder, StringCoder
from m3oe_jax.data.raw.key_index import KeyIndex, string_hashes


def _words(rng, n, alphabet=("a", "b", "é", "x", "\x1f", "0")):
  lengths = rng.integers(0, 20, n)
  return ["".join(rng.choice(alphabet, k)) for k in lengths]


def _index_in(words, keys):
  return pc.index_in(words, value_set=keys).fill_null(-1).to_numpy(
      zero_copy_only=False).astype(np.int64)


def test_hashes_depend_on_the_string_only():
  rng = np.random.default_rng(0)
  words = _words(rng, 500)
  a = pa.array(["pad"] * 3 + words)
  sliced = a.slice(3)
  assert (string_hashes(sliced) == string_hashes(pa.array(words))).all()
  assert (string_hashes(pa.array(words, pa.large_string()))
          == string_hashes(pa.array(words))).all()
  assert (string_hashes(pa.chunked_array([words[:7], words[7:]]))
          == string_hashes(pa.array(words))).all()
  distinct = sorted(set(words))
  assert len(set(string_hashes(pa.array(distinct)).tolist())) == len(distinct)
  assert len(string_hashes(pa.array([], pa.string()))) == 0


@pytest.mark.parametrize("fallback", [False, True])
def test_lookup_is_index_in(monkeypatch, fallback):
  if fallback:  # every key shares one hash: the index must fall back, still exact
    monkeypatch.setattr(key_index, "string_hashes",
                        lambda a: np.zeros(len(a), np.uint64))
  rng = np.random.default_rng(1)
  keys = sorted(set(_words(rng, 3000)))
  index = KeyIndex(pa.array(keys[:1000]))
  index.add(pa.array(keys[1000:]))
  assert index._exact == fallback  # pylint: disable=protected-access
  all_keys = pa.array(keys)
  for n in (50, 2000, 20000):  # small batches use the index, large ones index_in
    words = pa.array([w if rng.random() > 0.1 else None
                      for w in _words(rng, n) + keys[:n // 3]])
    assert (index.lookup(words) == _index_in(words, all_keys)).all()
    assert (index.lookup(words.slice(5)) == _index_in(words.slice(5), all_keys)).all()
  assert (KeyIndex().lookup(pa.array(["a", None])) == -1).all()


def test_arrow_coder_codes_in_order_of_first_appearance():
  rng = np.random.default_rng(2)
  arrow, plain = ArrowStringCoder(), StringCoder()
  for n in (10, 3000, 100, 5000):
    batch = pa.array(_words(rng, n, ("a", "b", "c", "d")))
    distinct = batch.dictionary_encode().dictionary
    expected = [plain.code(s) for s in distinct.to_pylist()]
    assert arrow.codes(distinct).tolist() == expected
  assert arrow.strings == plain.strings


def test_arrow_coder_row_codes_are_its_dictionary_codes():
  rng = np.random.default_rng(3)
  by_rows, by_dictionary = ArrowStringCoder(), ArrowStringCoder()
  for n in (10, 3000, 100, 5000):
    batch = pa.array([w if rng.random() > 0.1 else None
                      for w in _words(rng, n, ("a", "b", "c", "d"))])
    enc = batch.dictionary_encode()
    table = np.append(by_dictionary.codes(enc.dictionary), -7)
    expected = table[enc.indices.fill_null(len(table) - 1).to_numpy(zero_copy_only=False)]
    assert by_rows.row_codes(batch, -7).tolist() == expected.tolist()
  assert by_rows.strings == by_dictionary.strings
