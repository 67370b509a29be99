"""Bad input to a files dataset: one line naming the file, column and row (or
the config field), and nothing left that looks like a prepared dataset."""

import re

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from m3oe_jax.data import check_config, load_dataset
from m3oe_jax.data.raw import RawDataError, RawSourceNotFoundError
from m3oe_jax.errors import ConfigError
from tests.data import files_helpers as fh
from tests.data.helpers import nothing_looks_complete


def _set(table, column, row, value):
  """`table` with `column` of (1-based) row `row` set to `value` (text when it is)."""
  values = table.column(column).to_pylist()
  if isinstance(value, str):
    values = ["" if v is None else str(v) for v in values]
  values[row - 1] = value
  return table.set_column(table.schema.get_field_index(column), column, pa.array(values))


def _logs(raw, table):
  pa_csv.write_csv(table, str(raw / "logs.csv"))
  return {}


# id: (edit(raw) -> declaration changes, exception, regexes of the one-line message)
CASES = {
    "missing_column": (
        lambda raw: _logs(raw, fh.log_table().drop_columns(["price"])), RawDataError,
        [r"logs\.csv, column 'price': missing"]),
    "not_a_number": (
        lambda raw: _logs(raw, _set(fh.log_table(), "price", 7, "abc")), RawDataError,
        [r"logs\.csv, row 7 \(line 8\), column 'price': 'abc' is not a number"]),
    "label_outside_0_1": (
        lambda raw: _logs(raw, _set(fh.log_table(), "click", 5, 2)), RawDataError,
        [r"logs\.csv, row 5 \(line 6\), column 'click': label 2 is not 0 or 1"]),
    "label_missing": (
        lambda raw: _logs(raw, _set(fh.log_table(), "rating", 9, "")), RawDataError,
        [r"logs\.csv, row 9 \(line 10\), column 'rating': missing value"]),
    "unmapped_domain": (
        lambda raw: _logs(raw, _set(fh.log_table(), "scene", 3, "c")), RawDataError,
        [r"logs\.csv, row 3 \(line 4\), column 'scene': 'c' is not one of the mapped"]),
    "parquet_wrong_type": (
        lambda raw: (pq.write_table(fh.log_table().set_column(
            7, "price", pa.array([[1]] * fh.ROWS)), str(raw / "logs.parquet")),
                     {"logs": str(raw / "logs.parquet")})[1], RawDataError,
        [r"logs\.parquet, column 'price': type list<\w+: int64> cannot be read as a number"]),
    "parquet_nested_category": (
        lambda raw: (pq.write_table(fh.log_table().set_column(
            2, "item", pa.array([{"a": 1}] * fh.ROWS)), str(raw / "logs.parquet")),
                     {"logs": str(raw / "logs.parquet")})[1], RawDataError,
        [r"logs\.parquet, column 'item': type struct<a: int64> cannot be read"]),
    "duplicate_side_key": (
        lambda raw: (pa_csv.write_csv(pa.concat_tables([fh.users_table(), fh.users_table()
                                                        .slice(1, 1)]),
                                      str(raw / "users.csv")), {})[1], RawDataError,
        [r"users\.csv, row 5 \(line 6\), column 'user': key 'u1' is in side table 'users' "
         "twice"]),
    "side_column_missing": (
        lambda raw: (pa_csv.write_csv(fh.users_table().drop_columns(["age"]),
                                      str(raw / "users.csv")), {})[1], RawDataError,
        [r"users\.csv, column 'age': missing from side table 'users'"]),
    "no_log_file": (
        lambda raw: {"logs": str(raw / "nothing-*.csv")}, RawSourceNotFoundError,
        [r"config\.data\.files\.logs=.*nothing-\*\.csv.*: no file matches"]),
    "bad_time": (
        lambda raw: (_logs(raw, _set(fh.log_table(), "time", 11, "yesterday")),
                     {"split": {"mode": "temporal", "column": "time"}})[1], RawDataError,
        [r"logs\.csv, row 11 \(line 12\), column 'time': 'yesterday' is not a number \(the time"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, case):
  edit, error, patterns = CASES[case]
  raw = fh.write_dataset(tmp_path / "raw")
  files = fh.declaration(raw, **edit(raw))
  with pytest.raises(error) as info:
    load_dataset(fh.data_config(tmp_path / "tfds", files))
  message = str(info.value)
  assert "\n" not in message
  for pattern in patterns:
    assert re.search(pattern, message), message
  assert nothing_looks_complete(tmp_path / "tfds")


CONFIG_CASES = {
    "threshold": ({"tasks": {"like": {"column": "rating", "rule": "above"}}},
                  r"config\.data\.files\.tasks\.like\.threshold"),
    "rule": ({"tasks": {"like": {"column": "rating", "rule": "maybe"}}},
             r"config\.data\.files\.tasks\.like\.rule='maybe' must be one of"),
    "buckets": ({"categorical": {"user": {"vocabulary": {"mode": "hash"}}}},
                r"config\.data\.files\.categorical\.user\.vocabulary: mode 'hash' needs "
                "'buckets'"),
    "min_count": ({"categorical": {"user": {"vocabulary": {"min_count": 0}}}},
                  r"config\.data\.files\.categorical\.user\.vocabulary\.min_count=0"),
    "scaling": ({"dense": {"price": "log2"}}, r"config\.data\.files\.dense\.price='log2'"),
    "domain": ({"domain": {"column": "scene"}}, r"config\.data\.files\.domain: give exactly"),
    "split": ({"split": {"mode": "column"}}, r"config\.data\.files\.split\.column"),
    "unknown": ({"labels": {}}, r"config\.data\.files: unknown field\(s\) \['labels'\]"),
    "side_column_no_feature": ({"dense": {"price": "minmax"}},
                               r"columns \['age'\] are taken from a side table but declared "
                               "as no feature"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_declaration_is_refused_before_reading(tmp_path, case):
  changes, pattern = CONFIG_CASES[case]
  files = fh.declaration(tmp_path, **changes)
  with pytest.raises(ConfigError, match=pattern):
    check_config(fh.data_config(tmp_path / "tfds", files))
  assert not (tmp_path / "tfds").exists()


def test_a_fixed_file_prepares_after_a_refusal(tmp_path):
  raw = fh.write_dataset(tmp_path / "raw")
  _logs(raw, _set(fh.log_table(), "click", 5, 2))
  config = fh.data_config(tmp_path / "tfds", fh.declaration(raw))
  with pytest.raises(RawDataError):
    load_dataset(config)
  _logs(raw, fh.log_table())
  assert len(load_dataset(config).splits["train"]) == 48
