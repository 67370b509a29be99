"""M3oE on MovieLens-1M (prepared from the original archive through TFDS).

The paper's setup (M3oE, SIGIR 2024, and the authors' code): 3 domains by age
code, {1, 18}, {25}, {35, 45, 50, 56}; tasks click (rating > 3) and like
(rating > 4); an 8:1:1 split; sparse user id, movie id, gender, occupation,
zip code, first listed genre and the domain id, dense age (min-max scaled);
Adam with learning rate 1e-2 for the model and 1e-3 for the architecture
weights, weight decay 1e-5, 4 shared experts, embedding width 16, expert MLP
[512, 256, 256, 64], batch 40960, 50 epochs, early stopping after 10 epochs
without improvement.

What the paper leaves open, and what this config chooses:
  * the split: the authors' code slices its file 80/10/10 in file order
    without shuffling (`reference_split`). The default here is temporal (rows
    ordered by timestamp, then user, then movie), so no future interaction
    trains a model evaluated on the past; `random_split` is a seeded random
    split. Any reported figure names the split it used.
  * the optimiser schedule: `reference` (as in the authors' code).
  * the vocabularies: from the training split (`vocabulary='train'`; ids
    seen only in validation/test map to the shared OOV id 0), whereas the
    authors' code label-encodes all rows (`vocabulary='all_rows'`).

Variants (`--config=configs/movielens.py:VARIANT`, optionally `,model=NAME` to train
another registered model with the baselines' training setup, e.g.
`configs/movielens.py:tiny_offline,model=mmoe`):
  default          the paper's setup (needs ml-1m.zip, or network access).
  reference_split  the authors' file-order 80/10/10 slicing.
  random_split     a seeded random 8:1:1 split.
  tiny_offline     FAKE tiny data: 3,000 generated ratings in the exact
                   MovieLens-1M format, kept in m3oe_jax/data/testdata/, and a
                   small model. Runs offline anywhere in seconds; its numbers
                   mean nothing.
"""

import pathlib

import ml_collections

from m3oe_jax.config_utils import (add_paper_training, add_raw_source, parse_arg,
                                   shrink_to_tiny, with_tuples)

TESTDATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "testdata"
TINY_ARCHIVE = TESTDATA / "ml-1m-tiny.zip"
TINY_ARCHIVE_SHA256 = (
    "sha256:b4404c770a221ec725a35f36c183882582a3c213ac057011d83500154f478550")

VARIANTS = ("default", "reference_split", "random_split", "tiny_offline")


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  words, options = parse_arg(arg, VARIANTS, ("model",), "configs/movielens.py")
  if len(words) > 1:
    raise ValueError(f"configs/movielens.py: pick one of {VARIANTS}, got {sorted(words)}")
  variant = words.pop() if words else "default"
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "movielens"
  config.data.size = "1m"
  add_raw_source(config.data)
  config.data.age_groups = [[1, 18], [25], [35, 45, 50, 56]]  # one domain per group
  config.data.tasks = ["click", "like"]
  config.data.task_thresholds = [3, 4]  # label = rating > threshold
  config.data.sparse_features = ["user_id", "movie_id", "gender", "occupation", "zip",
                                 "genre", "domain"]
  config.data.dense_features = ["age"]
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
  config.data.max_host_bytes = 8 << 30
  config.data.chunk_rows = 1 << 20
  config.data.scratch_dir = ""

  add_paper_training(config, options.get("model", "m3oe"))
  config.log_every_steps = 5
  config.checkpoint_every_steps = 100

  if variant == "reference_split":
    config.data.split = "file_order"
  elif variant == "random_split":
    config.data.split = "random"
  elif variant == "tiny_offline":
    config.data.archive = str(TINY_ARCHIVE)
    config.data.archive_checksum = TINY_ARCHIVE_SHA256
    config.data.download = False
    shrink_to_tiny(config)
  return with_tuples(config)
