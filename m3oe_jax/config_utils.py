"""Shared pieces of the experiment config files in configs/."""

import ml_collections


def add_paper_training(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the model, optimizer, training and mesh sections of the paper's setup.

  M3oE (SIGIR 2024) and the authors' code: 4 shared experts, embedding width 16,
  fcn_dims [512, 256, 256, 64], Adam at 1e-2 (model) and 1e-3 (architecture)
  with weight decay 1e-5, batch 40960, 50 epochs, early stopping after 10
  epochs without a better validation AUC.
  """
  config.model = ml_collections.ConfigDict()
  config.model.name = "m3oe"
  config.model.embed_dim = 16
  config.model.fcn_dims = (512, 256, 256, 64)
  config.model.num_shared_experts = 4
  config.model.arch_init = 1.0
  config.model.gate_stop_gradient = True
  config.model.embed_init_std = 1e-4
  # Table rows are padded to a multiple of this, so a table can be row-sharded
  # evenly over any mesh axis whose size divides it. The padding rows stay zero.
  config.model.embed_rows_multiple = 128

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.schedule = "reference"  # reference | paper | darts
  config.optimizer.model_lr = 1e-2
  config.optimizer.arch_lr = 1e-3
  config.optimizer.weight_decay = 1e-5
  config.optimizer.train_loss = "mdmt"  # mdmt | mean
  config.optimizer.arch_loss = "mean"
  config.optimizer.arch_every_steps = 50  # darts only

  config.batch_size = 40960
  config.eval_batch_size = 40960
  config.num_epochs = 50
  config.patience = 10

  config.log_every_steps = 20
  config.checkpoint_every_steps = 200

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # -1: every device not used by the other axes
  config.mesh.model = 1
  config.mesh.embedding_axis = ""  # mesh axis to row-shard embedding tables on
  # Refuse to start when the compiled train step needs more bytes of one device
  # than this (0: no check). XLA's own allocator fails later and less clearly.
  config.mesh.device_memory_budget_bytes = 0
  return config


def shrink_to_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A small model and short run: a smoke test in seconds on a few thousand rows."""
  config.model.embed_dim = 8
  config.model.fcn_dims = (32, 16, 16, 8)
  config.optimizer.model_lr = 3e-3
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
  (`--config.model.fcn_dims='(512, 256, 256, 64)'`) but not list fields.
  """

  def convert(value):
    if isinstance(value, dict):
      return {k: convert(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return tuple(convert(v) for v in value)
    return value

  return ml_collections.ConfigDict(convert(config.to_dict()))
