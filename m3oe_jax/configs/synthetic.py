"""M3oE on synthetic multi-domain multi-task data (no download, runs anywhere).

The generator (m3oe_jax/data/datasets/synthetic.py) plants a shared, a
domain-specific and a task-specific component in every label's true logit, so
the data has the structure M3oE's three expert views are built for, and it
knows each row's true probability (the Bayes-optimal AUC is reported next to
the model's).

Variants (`--config=configs/synthetic.py:VARIANT`, optionally `,model=NAME` to
train another registered model with the baselines' training setup):
  default  100k rows, 3 domains, 2 tasks, a reference-shaped model.
  tiny     a few thousand rows and a small model: a smoke run in seconds.
"""

import ml_collections

from m3oe_jax.config_utils import add_paper_training, parse_arg, shrink_to_tiny, with_tuples


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  words, options = parse_arg(arg, ("default", "tiny"), ("model",), "configs/synthetic.py")
  variant = "tiny" if "tiny" in words else "default"
  model = options.get("model", "m3oe")
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "synthetic"
  config.data.seed = 0
  config.data.num_rows = 100_000
  config.data.num_domains = 3
  config.data.num_tasks = 2
  config.data.vocab_sizes = (100, 150, 20, 50)
  config.data.num_dense = 2
  config.data.domain_skew = 0.5  # 0: equal domains; larger: geometric skew
  config.data.latent_dim = 4
  config.data.split = (0.8, 0.1, 0.1)

  add_paper_training(config, model)
  config.model.m3oe.fcn_dims = (256, 128, 128, 64)
  config.optimizer.model_lr = 1e-3
  config.batch_size = 512
  config.eval_batch_size = 4096
  config.num_epochs = 12
  config.patience = 3
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200

  if variant == "tiny":
    config.data.num_rows = 4_000
    config.data.vocab_sizes = (30, 40, 10)
    shrink_to_tiny(config)
    config.log_every_steps = 10
    config.checkpoint_every_steps = 20
  return with_tuples(config)
