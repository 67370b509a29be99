"""Shared pieces of the experiment config files in configs/.

A config file's `get_config(arg)` takes a comma-separated argument in the
big_vision style: bare words pick variants (`tiny_offline`), `key=value` pairs
set options (`model=mmoe`), e.g. `--config=configs/movielens.py:tiny_offline,model=mmoe`.
"""

from __future__ import annotations

import ast

import ml_collections

from m3oe_jax.errors import ConfigError
from m3oe_jax.models import MODELS, default_model_config, model_class


def parse_arg(arg: str | None, words: tuple[str, ...], keys: tuple[str, ...],
              where: str) -> tuple[set[str], dict[str, str]]:
  """(variant words, key=value options) of a config argument, both checked."""
  chosen, options = set(), {}
  for item in filter(None, (arg or "").split(",")):
    if "=" in item:
      key, value = item.split("=", 1)
      if key not in keys:
        raise ValueError(f"{where}: unknown option {key!r} in {arg!r}; expected one of {keys}")
      options[key] = value
    elif item in words:
      chosen.add(item)
    else:
      raise ValueError(f"{where}: unknown variant {item!r} in {arg!r}; expected any of "
                       f"{words} and options {tuple(k + '=...' for k in keys)}")
  return chosen, options


def apply_override(config: ml_collections.ConfigDict, field: str, value) -> None:
  """Sets `config.<field>` (dotted); a string for a non-string field is parsed as a
  Python literal, and lists become tuples (as on the command line)."""
  *parents, last = field.split(".")
  node = config
  for part in parents:
    if part not in node:
      raise KeyError(f"override {field!r}: config has no field {part!r}")
    node = node[part]
  if last not in node:
    raise KeyError(f"override {field!r}: config has no field {last!r}")
  current = node[last]
  if isinstance(value, str) and not isinstance(current, str):
    value = ast.literal_eval(value)
  if isinstance(value, list):
    value = tuple(value)
  with node.unlocked():
    node[last] = value


def add_raw_source(data: ml_collections.ConfigDict) -> None:
  """The fields of a dataset prepared from raw files: where prepared data lives
  ("": TFDS's default, $TFDS_DATA_DIR if set, else ~/tensorflow_datasets), and
  where the raw data comes from: an archive path, else TFDS's manual_dir (default
  <data_dir>/downloads/manual) holding the archive or its extracted folder, else
  a download. `extracted_dir` reads extracted files as they are (no checksum);
  `archive_checksum` "" means the official one."""
  data.data_dir = ""
  data.archive = ""
  data.archive_checksum = ""
  data.manual_dir = ""
  data.extracted_dir = ""
  data.download = True


def add_paper_training(config: ml_collections.ConfigDict,
                       model: str = "m3oe") -> ml_collections.ConfigDict:
  """Adds the model, optimizer, training, variant and mesh sections.

  The model section holds the shared fields, the selected `name` and one section
  per registered model with its options at their defaults. M3oE is trained as in
  the paper and the authors' code: 4 shared experts, embedding width 16,
  fcn_dims [512, 256, 256, 64], Adam at 1e-2 (model) and 1e-3 (architecture)
  with weight decay 1e-5, batch 40960, 50 epochs, early stopping after 10 epochs
  without a better validation AUC. A baseline `model` gets the baselines'
  setup instead (`add_baseline_training`).
  """
  model_class(model)  # refuses an unknown name
  config.model = default_model_config(model)
  # Table rows are padded to a multiple of this, so a table can be row-sharded
  # evenly over any mesh axis whose size divides it. The padding rows stay zero.
  config.model.embed_rows_multiple = 128

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.schedule = "reference"  # reference | paper | darts | none
  config.optimizer.model_lr = 1e-2
  config.optimizer.arch_lr = 1e-3
  config.optimizer.weight_decay = 1e-5
  # StepLR: model_lr * lr_decay_factor ** floor(epoch / lr_decay_every_epochs); 0: off.
  config.optimizer.lr_decay_every_epochs = 0
  config.optimizer.lr_decay_factor = 1.0
  # The released M3oE trainer's: mdmt for 3 domains x 2 tasks, mean otherwise (or mdmt | mean).
  config.optimizer.train_loss = "reference"
  config.optimizer.arch_loss = "mean"
  config.optimizer.arch_every_steps = 50  # darts only
  # Per-task loss weights (() for all 1); "uncertainty" learns one log-variance per task.
  config.optimizer.task_weights = ()
  config.optimizer.task_weighting = "fixed"  # fixed | uncertainty

  config.batch_size = 40960
  config.eval_batch_size = 40960
  config.num_epochs = 50
  config.patience = 10
  # Weights scored on the test split: `reference` (the authors' trainers: the best if
  # early stopping fired, else the last) or `best` (the best validation mean AUC).
  config.test_weights = "reference"

  # Start from these weights (an .npz in the exchange layout, `params/<name>` and
  # `batch_stats/<name>`: docs/models.md) instead of the seed's random ones; "": the seed's.
  config.init_weights = ""
  # Replay recorded training row orders (an .npz of per-epoch permutations,
  # m3oe_jax/data/row_order.py) instead of the seeded shuffle; "": the seed's.
  config.train_order = ""

  config.log_every_steps = 20
  config.checkpoint_every_steps = 200
  # Checkpoint files are written in the background while training goes on (the
  # step waits only for the copy to host memory); False: each save blocks until
  # written.
  config.async_checkpointing = True
  # Stop when the training loss exceeds this multiple of its reference (the
  # smaller of the first loss and the recent median); 0: no check.
  config.divergence_factor = 10.0

  # Speed only; none of these changes what is trained. Training steps per jitted
  # call (a loop over k stacked batches); logging, checkpoints and preemption act
  # at call boundaries.
  config.steps_per_call = 1
  # Training calls whose batches are built and put on the devices ahead, in a
  # background thread (0: built when needed).
  config.prefetch_batches = 2
  # JAX's persistent compilation cache, so a resumed or repeated run does not
  # compile again; "{workdir}" is replaced by the run's workdir; "": not set here.
  config.compilation_cache_dir = "{workdir}/compilation_cache"

  # Which domains and tasks this run trains on (Table 2's variants; empty: all).
  config.variant = ml_collections.ConfigDict()
  config.variant.domains = ()
  config.variant.tasks = ()
  config.variant.per_variant_split = False

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # -1: every device not used by the other axes
  config.mesh.model = 1
  config.mesh.embedding_axis = ""  # mesh axis to row-shard embedding tables on
  # Refuse to start when the compiled train step needs more bytes of one device
  # than this (0: no check). XLA's own allocator fails later and less clearly.
  config.mesh.device_memory_budget_bytes = 0
  # The model this config's training setup (optimizer, loss, seed) was made for:
  # `check_training_setup` refuses another config.model.name.
  config.setup_for_model = model
  if model != "m3oe":
    add_baseline_training(config)
  return config


def check_training_setup(config: ml_collections.ConfigDict) -> None:
  """Refuses a config whose model was swapped after its training setup was made
  (`--config.model.name=mmoe` on an M3oE config would train MMoE with M3oE's
  optimizer): the config argument `model=NAME` picks a model with its own setup."""
  made_for = config.get("setup_for_model", config.model.name)
  if config.model.name != made_for:
    raise ConfigError(
        f"config.model.name={config.model.name!r}, but this config's training setup "
        f"(optimizer, loss, seed) is the one of {made_for!r}. Pick the model with the "
        f"config argument, e.g. `--config=configs/movielens.py:model={config.model.name}` "
        "(the authors' setup for that model); to train it with this setup on purpose, "
        f"also pass --config.setup_for_model={config.model.name}.")


def add_baseline_training(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The baselines' training setup in the authors' scripts: one Adam over every
  weight (no architecture step), lr 1e-3 decayed x0.8 every 4 epochs, weight
  decay 1e-5 as an L2 term, the grouped (domain, task) loss, batch 40960, 50
  epochs, patience 10, seed 2022 (the paper averages seeds 2022-2026)."""
  config.optimizer.schedule = "none"
  config.optimizer.model_lr = 1e-3
  config.optimizer.lr_decay_every_epochs = 4
  config.optimizer.lr_decay_factor = 0.8
  config.optimizer.weight_decay = 1e-5
  config.optimizer.train_loss = "mdmt"
  config.batch_size = 40960
  config.eval_batch_size = 40960
  config.num_epochs = 50
  config.patience = 10
  config.seed = 2022
  return config


def shrink_to_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A small model and short run: a smoke test in seconds on a few thousand rows."""
  config.model.embed_dim = 8
  for name in MODELS:
    config.model[name].update(dict(model_class(name).TINY))
  config.optimizer.model_lr = 3e-3
  config.optimizer.lr_decay_every_epochs = 0
  config.batch_size = 128
  config.eval_batch_size = 512
  config.num_epochs = 3
  config.patience = 3
  config.log_every_steps = 5
  config.checkpoint_every_steps = 10
  return config


def with_tuples(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same config with every list turned into a tuple.

  ml_collections can override tuple fields from the command line
  (`--config.model.m3oe.fcn_dims='(512, 256, 256, 64)'`) but not list fields.
  """

  def convert(value):
    if isinstance(value, dict):
      return {k: convert(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return tuple(convert(v) for v in value)
    return value

  return ml_collections.ConfigDict(convert(config.to_dict()))
