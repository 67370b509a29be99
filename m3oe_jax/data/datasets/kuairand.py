"""KuaiRand (Pure, 1K, 27K) as a TFDS builder that needs no TensorFlow.

Reads the original archives from https://zenodo.org/records/10439422 (CC BY-SA
4.0): interaction logs joined with user and basic video features and the
video statistics' `counts` (whichever the features need). Domains are
values of the log column `tab` (default: the three most frequent tabs, in the
order of their ids), tasks are binary log columns (default `is_click`,
`long_view`). `data/raw/` does the splitting, vocabularies and storage.

Builder configs: `pure`, `1k`, `27k` with `DEFAULT_SETTINGS` (the richer,
non-paper features and the most frequent tabs). Any other settings, such as
the paper's (tabs 0, 1, 4 and the authors' 33 features, `configs/kuairand.py`),
give a derived config named `<size>_<hash of the settings>`, so differently
prepared data never share a directory (`make_config`).
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from m3oe_jax.data.raw import RawDataError, builder, encode, prepare, settings, sources, text
from m3oe_jax.errors import ConfigError

log = logging.getLogger("m3oe_jax.data")

ZENODO = "https://zenodo.org/records/10439422/files/"

ARCHIVES = {
    "pure": sources.ArchiveSpec(ZENODO + "KuaiRand-Pure.tar.gz", "KuaiRand-Pure.tar.gz",
                                "md5:0820331067a3784d9691136f772b35a7", "KuaiRand-Pure"),
    "1k": sources.ArchiveSpec(ZENODO + "KuaiRand-1K.tar.gz", "KuaiRand-1K.tar.gz",
                              "md5:6b0b9c8222d67fcd4c676218edca3f1f", "KuaiRand-1K"),
    "27k": sources.ArchiveSpec(ZENODO + "KuaiRand-27K.tar.gz", "KuaiRand-27K.tar.gz",
                               "md5:3e3c799a24e2d23a4d2c757fbf9adf59", "KuaiRand-27K"),
}
PAPER_ARCHIVE = ARCHIVES["pure"]  # the data of the paper's Table 2
SUFFIX = {"pure": "pure", "1k": "1k", "27k": "27k"}

# Log files by short name; `{s}` is the size suffix. 27K splits big logs into
# `_part1`, `_part2`, which the trailing `*` picks up (read in name order).
LOGS = {
    "standard_4_08_to_4_21": "log_standard_4_08_to_4_21_{s}*.csv",
    "standard_4_22_to_5_08": "log_standard_4_22_to_5_08_{s}*.csv",
    "random_4_22_to_5_08": "log_random_4_22_to_5_08_{s}*.csv",
}
USER_FILE = "user_features_{s}*.csv"
VIDEO_FILE = "video_features_basic_{s}*.csv"
STAT_FILE = "video_features_statistic_{s}*.csv"

LOG_COLUMNS = (
    "user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like",
    "is_follow", "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms",
    "duration_ms", "profile_stay_time", "comment_stay_time", "is_profile_enter",
    "is_rand", "tab")
BINARY_LOG_COLUMNS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward",
                      "is_hate", "long_view", "is_profile_enter", "is_rand")
MAX_TAB = 14  # `tab` is 0..14 (KuaiRand's README)
# Share of the kept log rows whose user or video may be absent from a feature
# file before preparation is refused: above it, the files are not of one release.
MAX_MISSING_FEATURE_SHARE = 0.5
USER_COLUMNS = (
    "user_id", "user_active_degree", "is_lowactive_period", "is_live_streamer",
    "is_video_author", "follow_user_num", "follow_user_num_range", "fans_user_num",
    "fans_user_num_range", "friend_user_num", "friend_user_num_range", "register_days",
    "register_days_range") + tuple(f"onehot_feat{i}" for i in range(18))
VIDEO_COLUMNS = (
    "video_id", "author_id", "video_type", "upload_dt", "upload_type", "visible_status",
    "video_duration", "server_width", "server_height", "music_id", "music_type", "tag")

# Sparse features: name -> (table, column, how the raw value is read).
#   int: integer id from the log; num: a number used as a category (missing
#   allowed); str: a string category; plus the derived ones below.
USER_STR = ("user_active_degree", "follow_user_num_range", "fans_user_num_range",
            "friend_user_num_range", "register_days_range")
USER_NUM = ("is_lowactive_period", "is_live_streamer", "is_video_author") + tuple(
    f"onehot_feat{i}" for i in range(18))
# `tag` is the whole comma list taken as one category (the authors' scripts).
VIDEO_STR = ("video_type", "upload_type", "visible_status", "upload_dt", "tag")
VIDEO_NUM = ("author_id", "music_id", "music_type", "server_width", "server_height")
SPARSE_FEATURES = (
    {"user_id": ("log", "user_id", "int"), "video_id": ("log", "video_id", "int"),
     "hour": ("log", "hourmin", "hour"), "date": ("log", "date", "int"),
     "domain": ("log", "tab", "domain")}
    | {c: ("user", c, "str") for c in USER_STR}
    | {c: ("user", c, "num") for c in USER_NUM}
    | {c: ("video", c, "str") for c in VIDEO_STR}
    | {c: ("video", c, "num") for c in VIDEO_NUM}
    | {"first_tag": ("video", "tag", "first_tag"),
       "duration_bucket": ("video", "video_duration", "duration_bucket")}
    | {"counts": ("stat", "counts", "num")})
# Dense features: raw counts from the user table, log1p-scaled, then min-max
# scaled on the training split.
DENSE_FEATURES = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
# Edges (seconds) of the video duration buckets.
DURATION_EDGES_S = np.array([0, 5, 10, 15, 18, 20, 30, 45, 60, 120, 300, 600], np.float64)

DEFAULT_SETTINGS = {
    "size": "pure",
    "logs": list(LOGS),
    "tabs": [],  # empty: the `num_auto_tabs` most frequent tabs, in id order
    "num_auto_tabs": 3,
    "tasks": ["is_click", "long_view"],
    "sparse_features": [
        "user_id", "video_id", *USER_STR[:1], *USER_NUM[:3], *USER_STR[1:],
        *USER_NUM[3:], "author_id", "video_type", "upload_type", "visible_status",
        "music_type", "first_tag", "duration_bucket", "hour", "domain"],
    "dense_features": list(DENSE_FEATURES),
    "split": "temporal",
    "split_ratios": [8.0, 1.0, 1.0],
    "split_seed": 0,
    # "train": vocabularies from the training rows (unseen values -> id 0);
    # "all_rows": every value of every split gets an id (the reference code).
    "vocabulary": "train",
    "checksum": "",  # expected archive checksum if not the official one
}


def make_config(**overrides) -> builder.RawBuilderConfig:
  """The builder config for `overrides` of `DEFAULT_SETTINGS` (validated)."""
  s = settings.with_defaults("kuairand", DEFAULT_SETTINGS, overrides)
  s["split_ratios"] = settings.config_ratios(s["split_ratios"])
  s["tabs"] = settings.config_int_list(s["tabs"], "tabs", 0, MAX_TAB, "KuaiRand's tab ids")
  _validate(s)
  base = {**DEFAULT_SETTINGS, "size": s["size"]}
  name = s["size"] if s == base else f"{s['size']}_{settings.settings_hash(s)}"
  return builder.RawBuilderConfig(name=name, description=f"KuaiRand-{s['size']}", settings=s)


def _validate(s: Mapping[str, Any]) -> None:
  if s["size"] not in ARCHIVES:
    raise ConfigError(f"kuairand: config.data.size={s['size']!r} is not one of "
                      f"{list(ARCHIVES)}")
  bad = [x for x in s["logs"] if x not in LOGS]
  if bad or not s["logs"] or len(set(s["logs"])) != len(s["logs"]):
    problem = bad or "empty or a log twice"
    raise ConfigError(f"kuairand: config.data.logs={s['logs']} invalid ({problem}); "
                      f"choose some of {list(LOGS)}, each once")
  bad = [t for t in s["tasks"] if t not in LOG_COLUMNS]
  if bad or not s["tasks"]:
    raise ConfigError(f"kuairand: config.data.tasks {bad or s['tasks']} are not log "
                      f"columns {list(LOG_COLUMNS)}")
  bad = [t for t in s["tasks"] if t not in BINARY_LOG_COLUMNS]
  if bad or len(set(s["tasks"])) != len(s["tasks"]):
    problem = f"{bad} are not 0/1 columns" if bad else "a task is listed twice"
    raise ConfigError(f"kuairand: config.data.tasks={s['tasks']}: {problem}; tasks are "
                      f"distinct 0/1 log columns {list(BINARY_LOG_COLUMNS)}")
  settings.check_features_and_split("kuairand", s, SPARSE_FEATURES, DENSE_FEATURES)
  if not s["tabs"]:
    settings.config_int(s["num_auto_tabs"], "num_auto_tabs", 1, MAX_TAB + 1,
                        "how many of the most frequent tabs become domains when "
                        "config.data.tabs is empty")


class M3oeKuairand(builder.RawTableBuilder):
  """KuaiRand interactions: domains by `tab`, binary log columns as tasks."""

  name = "m3oe_kuairand"
  BUILDER_CONFIGS = [make_config(size=k) for k in ARCHIVES]
  HOMEPAGE = "https://kuairand.com/"
  CITATION = """@inproceedings{gao2022kuairand,
  title={KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly
         Exposed Videos},
  author={Gao, Chongming and Li, Shijun and Zhang, Yuan and Chen, Jiawei and Li,
          Biao and Lei, Wenqiang and Jiang, Peng and He, Xiangnan},
  booktitle={CIKM}, year={2022}}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download KuaiRand-Pure.tar.gz (or -1K, -27K) from "
      "https://zenodo.org/records/10439422 and put it in the manual dir, or "
      "point config.data.archive at it.")

  def archive_spec(self) -> sources.ArchiveSpec:
    return ARCHIVES[self.settings["size"]]

  def prepare_into(self, source: sources.RawSource, out_dir: str) -> dict[str, Any]:
    return prepare_kuairand(self.settings, source, out_dir, scratch_dir=self._scratch_dir,
                            chunk_rows=self._chunk_rows)


BUILDER = M3oeKuairand


# ----------------------------------------------------------------------------
# Reading.

CSV = text.TextFormat(delimiter=",", header=True, encoding="utf8", quote=True)


def _first_tag(s: str) -> str:
  return s.split(",")[0].strip()


def _read_table(source: sources.RawSource, members: Sequence[str], id_col: str,
                features: Sequence[str], dense: Sequence[str],
                coders: Mapping[str, encode.StringCoder]) -> encode.IdTable:
  """A per-user or per-video feature table: the sparse `features` as codes, the
  `dense` ones log1p-scaled."""
  types = {id_col: pa.int64()}
  plan = []  # (feature name, column, kind)
  for f in features:
    _, col, kind = SPARSE_FEATURES[f]
    types[col] = pa.string() if kind in ("str", "first_tag") else pa.float64()
    plan.append((f, col, kind))
  for q in dense:
    types[q] = pa.float64()
  ids, lines = [], []
  codes = {f: [] for f in features}
  dvals = {q: [] for q in dense}
  for member in members:
    where = source.display(member)
    for first, table in text.read_blocks(source, member, CSV, types):
      ids.append(text.column_int(table, id_col, where, first))
      lines.append(np.arange(first, first + table.num_rows))
      for f, col, kind in plan:
        if kind == "str":
          codes[f].append(coders[f].encode(table.column(col)))
        elif kind == "first_tag":
          codes[f].append(coders[f].encode(table.column(col), _first_tag))
        elif kind == "duration_bucket":
          ms = table.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
          b = np.full(len(ms), text.MISSING, np.int64)
          ok = np.isfinite(ms)
          b[ok] = np.searchsorted(DURATION_EDGES_S, ms[ok] / 1000.0, side="right")
          codes[f].append(b)
        else:  # num
          codes[f].append(text.float_codes(table, col, where, first))
      for q in dense:
        v = text.column_float(table, q, where, first, check_finite=True)
        dvals[q].append(np.log1p(np.maximum(v, 0.0)))
  cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)
  return encode.IdTable(cat(ids, np.int64), {f: cat(v, np.int64) for f, v in codes.items()},
                        {q: cat(v, np.float64) for q, v in dvals.items()},
                        source.display(members[0]) if members else source.path, id_col,
                        cat(lines, np.int64))


def _log_members(source: sources.RawSource, s: Mapping[str, Any]) -> list[str]:
  members = []
  for name in s["logs"]:
    pattern = LOGS[name].format(s=SUFFIX[s["size"]])
    found = source.find_parts(pattern[:-len("*.csv")], f"log {name!r}")
    if not found:
      raise RawDataError(
          f"{source.path}: log file {pattern!r} (log {name!r}) is missing from this "
          f"{source.kind} source")
    members.extend(found)
  return members


def _feature_parts(source: sources.RawSource, pattern: str, what: str) -> list[str]:
  """The parts of a feature file (`pattern` without its `*.csv`, then
  `_part<N>.csv` or `.csv`); none at all is an error naming `pattern`."""
  found = source.find_parts(pattern[:-len("*.csv")], what)
  if not found:
    source.find_one(pattern, what)  # refuses the missing file, naming it
  return found


def count_tabs(source: sources.RawSource, members: Sequence[str]) -> np.ndarray:
  counts = np.zeros(MAX_TAB + 1, np.int64)
  for member in members:
    where = source.display(member)
    for first, table in text.read_blocks(source, member, CSV, {"tab": pa.int64()}):
      tab = text.column_int(table, "tab", where, first)
      text.check_range(tab, 0, MAX_TAB, "tab", where, first, "KuaiRand's tab ids")
      counts += np.bincount(tab, minlength=MAX_TAB + 1)
  return counts


def auto_tabs(counts: np.ndarray, k: int, where: str) -> list[int]:
  present = np.flatnonzero(counts)
  if len(present) < k:
    raise RawDataError(f"{where}: only {len(present)} distinct tabs "
                       f"{present.tolist()} in the logs, {k} requested")
  order = sorted(present.tolist(), key=lambda t: (-counts[t], t))[:k]
  return sorted(order)


def prepare_kuairand(s: Mapping[str, Any], source: sources.RawSource, out_dir: str, *,
                     scratch_dir: str | None = None,
                     chunk_rows: int = settings.DEFAULT_CHUNK_ROWS) -> dict[str, Any]:
  suffix = SUFFIX[s["size"]]
  log_members = _log_members(source, s)
  tabs = list(s["tabs"])
  tab_counts = None
  if not tabs:
    tab_counts = count_tabs(source, log_members)
    tabs = auto_tabs(tab_counts, int(s["num_auto_tabs"]), source.path)
  tabs_sorted = np.array(sorted(tabs), np.int64)
  tab_to_domain = np.array([tabs.index(int(t)) for t in tabs_sorted], np.int32)

  sparse = list(s["sparse_features"])
  kinds = {f: SPARSE_FEATURES[f] for f in sparse}
  coders = {f: encode.StringCoder() for f in sparse if kinds[f][2] in ("str", "first_tag")}
  user_feats = [f for f in sparse if kinds[f][0] == "user"]
  video_feats = [f for f in sparse if kinds[f][0] == "video"]
  dense = list(s["dense_features"])
  members = {"logs": log_members}
  users = videos = None
  if user_feats or dense:
    m = [source.find_one(USER_FILE.format(s=suffix), "user features")]
    members["user_features"] = m
    users = _read_table(source, m, "user_id", user_feats, dense, coders)
  if video_feats:
    m = _feature_parts(source, VIDEO_FILE.format(s=suffix), "basic video features")
    members["video_features"] = m
    videos = _read_table(source, m, "video_id", video_feats, (), coders)
  stat_feats = [f for f in sparse if kinds[f][0] == "stat"]
  stats = None
  if stat_feats:
    m = _feature_parts(source, STAT_FILE.format(s=suffix), "video statistics")
    members["video_statistics"] = m
    stats = _read_table(source, m, "video_id", stat_feats, (), coders)

  tasks = list(s["tasks"])
  log_columns = ["user_id", "video_id", "time_ms", "tab"]
  log_columns += [c for c, f in (("hourmin", "hour"), ("date", "date")) if f in sparse]
  log_types = {c: pa.int64() for c in log_columns + tasks}

  feature_files = {"user": "user_features", "video": "video_features",
                   "stat": "video_statistics"}
  missing_acc = {}  # table name -> [rows checked, rows missing, missing ids]
  checks = {}

  def chunks() -> Iterator[prepare.Chunk]:
    for member in log_members:
      where = source.display(member)
      for first, table, hashes in text.read_blocks(source, member, CSV, log_types,
                                                   line_hashes=True):
        tab = text.column_int(table, "tab", where, first)
        text.check_range(tab, 0, MAX_TAB, "tab", where, first, "KuaiRand's tab ids")
        if "hourmin" in log_types:
          _check_hourmin(text.column_int(table, "hourmin", where, first), where, first)
        text.check_range(text.column_int(table, "time_ms", where, first), 0, text.MAX_TIME,
                         "time_ms", where, first, "unix milliseconds")
        pos, keep = encode.lookup_rows(tabs_sorted, tab)
        idx = np.flatnonzero(keep)
        if not len(idx):
          continue
        lines = first + idx
        col = lambda c: text.column_int(table, c, where, first)[idx]
        user, video = col("user_id"), col("video_id")
        labels = np.empty((len(idx), len(tasks)), np.uint8)
        for j, t in enumerate(tasks):
          v = col(t)
          _check_binary(v, t, where, lines)
          labels[:, j] = v
        upos = None
        if users is not None:
          upos, ufound = encode.lookup_rows(users.ids, user)
          if dense and not ufound.all():
            bad = int(np.flatnonzero(~ufound)[0])
            raise RawDataError(
                f"{where}, line {int(lines[bad])}, column 'user_id': user "
                f"{int(user[bad])} is not in {members['user_features'][0]} (needed for "
                f"dense features {dense})")
        found_in = {"user": (users, upos, ufound)} if users is not None else {}
        for name, tbl, key in (("video", videos, video), ("stat", stats, video)):
          if tbl is not None:
            found_in[name] = (tbl, *encode.lookup_rows(tbl.ids, key))
        for name, (_, _, found) in found_in.items():
          acc = missing_acc.setdefault(name, [0, 0, []])
          acc[0] += len(found)
          acc[1] += int(np.count_nonzero(~found))
          if not found.all():
            acc[2] = [np.unique(np.concatenate(
                acc[2] + [(user if name == "user" else video)[~found]]))]
        out = np.empty((len(idx), len(sparse)), np.int64)
        for j, f in enumerate(sparse):
          table_name, column, kind = kinds[f]
          if f == "domain":
            out[:, j] = tab_to_domain[pos[idx]]
          elif kind == "hour":
            out[:, j] = col("hourmin") // 100
          elif table_name == "log":
            out[:, j] = col(column)
          else:
            tbl, p, found = found_in[table_name]
            missing = coders[f].code("") if f in coders else text.MISSING
            out[:, j] = np.where(found, tbl.codes[f][p], missing)
        dvals = np.empty((len(idx), len(dense)), np.float64)
        for j, q in enumerate(dense):
          dvals[:, j] = users.dense[q][upos]
        yield prepare.Chunk(domain=tab_to_domain[pos[idx]], labels=labels, sparse=out,
                            dense=dvals, time=col("time_ms"), user=user, item=video,
                            row_hash=hashes[idx], origin=where)
    report = {}
    for name, (checked, rows, ids) in missing_acc.items():
      ids = ids[0] if ids else np.zeros(0, np.int64)
      files = ", ".join(source.display(m) for m in members[feature_files[name]])
      report[files] = {"id_column": "user_id" if name == "user" else "video_id",
                       "ids": len(ids), "rows": rows, "rows_checked": checked,
                       "example_ids": ids[:5].tolist()}
      if rows > MAX_MISSING_FEATURE_SHARE * checked:
        raise RawDataError(
            f"{files}: {rows:,} of the {checked:,} kept log rows have a "
            f"{report[files]['id_column']} absent from this file ({len(ids):,} distinct "
            f"ids, e.g. {ids[:5].tolist()}); more than {MAX_MISSING_FEATURE_SHARE:.0%} "
            "means the feature file and the logs are not from the same KuaiRand "
            "release. Use the files of one archive.")
      if rows:
        log.warning("%s: %d log rows (%d distinct ids) are absent from it and get "
                    "missing features", files, rows, len(ids))
    checks["missing_features"] = report

  spec = prepare.PrepareSpec(
      dataset=f"kuairand-{s['size']}",
      sparse=tuple(prepare.FeatureDef(f, "str" if f in coders else "int") for f in sparse),
      dense_names=tuple(dense),
      domain_names=tuple(f"tab{t}" for t in tabs),
      task_names=tuple(tasks),
      split=s["split"], split_ratios=tuple(s["split_ratios"]), split_seed=int(s["split_seed"]),
      vocabulary=s["vocabulary"],
      coders=coders,
      checks=checks,
      source={**source.describe(), "files": members, "tabs": tabs,
              "tab_counts_all_rows": (tab_counts.tolist() if tab_counts is not None
                                      else None)})
  return prepare.prepare(chunks(), spec, out_dir, scratch_dir=scratch_dir, chunk_rows=chunk_rows)


def _check_hourmin(values: np.ndarray, where: str, first: int) -> None:
  bad = np.flatnonzero((values < 0) | (values // 100 > 23) | (values % 100 > 59))
  if len(bad):
    i = int(bad[0])
    raise RawDataError(
        f"{where}, line {first + i}, column 'hourmin': {int(values[i])} is not an HHMM "
        f"time (hour 0..23, minute 0..59); fix or remove the row ({len(bad)} such "
        "value(s) in this block)")


def _check_binary(values: np.ndarray, name: str, where: str, lines: np.ndarray) -> None:
  bad = np.flatnonzero((values != 0) & (values != 1))
  if len(bad):
    raise RawDataError(
        f"{where}, line {int(lines[bad[0]])}, column {name!r}: label "
        f"{int(values[bad[0]])} is outside {{0, 1}}")
