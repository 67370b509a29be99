"""M3oE on KuaiRand (prepared from the original archives through TFDS).

The paper's setup (M3oE, SIGIR 2024, and the authors' code): KuaiRand-Pure, 3
domains by the log column `tab`, tasks click (`is_click`) and long view
(`long_view`), an 8:1:1 split; Adam with learning rate 1e-2 for the model and
1e-3 for the architecture weights, weight decay 1e-5, 4 shared experts,
embedding width 16, expert MLP [512, 256, 256, 64], batch 40960, 50 epochs,
early stopping after 10 epochs without improvement.

Features and domains as in the authors' KuaiRand script
(`zhangzj2114/mdmt`, `examples/run_kuairand.py`): domains `tab` 0, 1, 4 in
that order (domain 0, 1, 2); 33 categorical features, each a 16-wide
embedding, plus the domain id, so the input is 34 fields (544 wide): the user
features `user_active_degree, is_live_streamer, is_video_author`, the four
`*_range` columns and `onehot_feat0` .. `onehot_feat17`; the video features
`video_type, upload_dt, upload_type, server_width, server_height,
music_type, tag` (`tag` is the whole comma list as one category) and `counts`
from `video_features_statistic_pure.csv`. No user id, no video id, no dense
features.

What the paper's data cannot pin down, and what this config chooses:
  * which logs: the authors trained on a pre-built csv; which Pure logs it
    joined, and its row order, are not published. This config joins all
    three Pure logs (two standard logs and the random log) and keeps the rows
    of tabs 0, 1, 4. The paper reports 178,087 / 2,236,414 / 93,165
    interactions for its three domains (2,507,666 in all); prepare prints the
    counts this config gets, and they are recorded in the dataset's schema
    (`source.counts`, `source.tabs`).
  * the split: temporal (ordered by `time_ms`, then user, then video), since
    the paper does not say and the file order is unknown; `random_split` is
    the seeded random alternative.
  * the optimiser schedule: `reference` (as in the authors' code).
  * the vocabularies: from the training split (`vocabulary='train'`; values
    seen only in validation/test map to the shared OOV id 0), whereas the
    authors' code label-encodes all rows (`vocabulary='all_rows'`).
  * `tabs=[]` picks the `num_auto_tabs` most frequent tabs (in id order)
    instead of fixed ones.

Variants (`--config=configs/kuairand.py:VARIANT`, optionally `,model=NAME` to train
another registered model with the baselines' training setup, e.g.
`configs/kuairand.py:tiny_offline,model=mmoe`). `rich` combines with any other
variant (`configs/kuairand.py:tiny_offline,rich`):
  default        the paper's setup on KuaiRand-Pure (needs the Pure archive, or
                 network access to download it).
  random_split   the same with a seeded random 8:1:1 split.
  1k, 27k        KuaiRand-1K / -27K with the paper's other settings (27K streams
                 from memory-mapped files during training).
  rich           NOT the paper's features: user and video ids, the user
                 features (ranges and categorical codes as sparse ids; follower,
                 fan, friend counts and register days as dense values, log1p
                 then min-max on the training split), the basic video features
                 (author, type, upload type, visibility, music type, first tag,
                 duration bucket), the hour of the interaction and the domain.
  tiny_offline   FAKE tiny data: 3,000 generated rows in the exact KuaiRand
                 format (with the statistics file), kept in
                 m3oe_jax/data/testdata/, the paper's features and tabs, and a
                 small model. Runs offline anywhere in seconds; its numbers mean
                 nothing.
"""

import pathlib

import ml_collections

from m3oe_jax.config_utils import (add_paper_training, add_raw_source, parse_arg,
                                   shrink_to_tiny, with_tuples)

TESTDATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "testdata"
TINY_ARCHIVE = TESTDATA / "KuaiRand-Pure-tiny.tar.gz"
TINY_ARCHIVE_MD5 = "md5:572b19fc2893ed27f89d0f21d66c82e3"

USER_RANGES = ["follow_user_num_range", "fans_user_num_range", "friend_user_num_range",
               "register_days_range"]
ONEHOT = [f"onehot_feat{i}" for i in range(18)]
# The authors' script: 33 categorical columns, then the domain id.
PAPER_SPARSE = (["user_active_degree", "is_live_streamer", "is_video_author"] + USER_RANGES
                + ONEHOT + ["video_type", "upload_dt", "upload_type", "server_width",
                            "server_height", "music_type", "tag", "counts", "domain"])
PAPER_TABS = [0, 1, 4]
# The `rich` variant (not the paper's).
RICH_SPARSE = (["user_id", "video_id", "user_active_degree", "is_lowactive_period",
                "is_live_streamer", "is_video_author"] + USER_RANGES + ONEHOT
               + ["author_id", "video_type", "upload_type", "visible_status", "music_type",
                  "first_tag", "duration_bucket", "hour", "domain"])
RICH_DENSE = ["follow_user_num", "fans_user_num", "friend_user_num", "register_days"]

VARIANTS = ("default", "random_split", "1k", "27k", "tiny_offline", "rich")


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  words, options = parse_arg(arg, VARIANTS, ("model",), "configs/kuairand.py")
  rich = "rich" in words
  words.discard("rich")
  if len(words) > 1:
    raise ValueError(f"configs/kuairand.py: pick one of {VARIANTS} (plus `rich`), got "
                     f"{sorted(words)}")
  variant = words.pop() if words else "default"
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "kuairand"
  config.data.size = "pure"  # TFDS builder config: pure | 1k | 27k
  add_raw_source(config.data)
  config.data.logs = ["standard_4_08_to_4_21", "standard_4_22_to_5_08",
                      "random_4_22_to_5_08"]
  config.data.tabs = PAPER_TABS  # domain 0, 1, 2; []: the `num_auto_tabs` most
  config.data.num_auto_tabs = 3  # frequent tabs, in id order
  config.data.tasks = ["is_click", "long_view"]  # any binary log columns
  config.data.sparse_features = RICH_SPARSE if rich else PAPER_SPARSE
  config.data.dense_features = RICH_DENSE if rich else []
  config.data.split = "temporal"  # temporal | random | file_order
  config.data.split_ratios = [8.0, 1.0, 1.0]
  config.data.split_seed = 0  # random split only
  # Which rows the sparse-feature vocabularies come from: "train" (ids from the
  # training split; values seen only in validation/test share the OOV id 0) or
  # "all_rows" (the authors' code: every value of every split gets its own,
  # never-trained id). Dense statistics are always train-only. Each option
  # prepares into its own folder and is recorded in the schema's `source`.
  config.data.vocabulary = "train"
  config.data.placement = "auto"  # auto | host | stream | device
  config.data.max_host_bytes = 8 << 30  # auto: larger splits stream from disk
  config.data.chunk_rows = 1 << 20  # preparation block (memory, not output)
  # Preparation spill files: "" inside the folder being prepared, else in a
  # folder per prepared dataset under this one (deleted when done or on a rerun).
  config.data.scratch_dir = ""

  add_paper_training(config, options.get("model", "m3oe"))

  if variant == "random_split":
    config.data.split = "random"
  elif variant in ("1k", "27k"):
    config.data.size = variant
  elif variant == "tiny_offline":
    config.data.archive = str(TINY_ARCHIVE)
    config.data.archive_checksum = TINY_ARCHIVE_MD5
    config.data.download = False
    shrink_to_tiny(config)
  return with_tuples(config)
