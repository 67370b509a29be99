"""Synthetic multi-domain multi-task data with a known true probability per label.

Every sparse id has a latent vector; an example's latent state `z` is the sum of
its ids' vectors. The true logit of task t for an example of domain d is

  z . (c_shared + c_domain[d] + c_task[t]) + gamma * <user, item> + dense . w[t] + b[d, t]

so it holds a component shared by every (domain, task), one per domain and one
per task, plus a user-item interaction between the first two features. Labels
are Bernoulli draws of sigmoid(logit), and `true_prob` is kept beside them: the
AUC of `true_prob` on a split is the Bayes-optimal AUC of those rows.

The domain id is also the last sparse feature, `domain`, as in the reference.
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np

from m3oe_jax.data.pipeline import SPLITS, ArraySource, Dataset
from m3oe_jax.data.schema import FeatureSchema
from m3oe_jax.errors import ConfigError, is_number, is_whole


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses, before any row is generated, sizes and fractions that cannot give
  three non-empty splits."""
  for name, least in (("num_rows", 1), ("num_domains", 1), ("num_tasks", 1),
                      ("latent_dim", 1), ("num_dense", 0), ("seed", 0)):
    if not is_whole(config[name]) or config[name] < least:
      raise ConfigError(f"config.data.{name}={config[name]!r} must be a whole number "
                        f">= {least}")
  vocabs = config.vocab_sizes
  if (not isinstance(vocabs, (tuple, list)) or len(vocabs) < 2
      or not all(is_whole(v) and v >= 1 for v in vocabs)):
    raise ConfigError(f"config.data.vocab_sizes={vocabs!r} needs at least two features "
                      "(user, item), each a whole number >= 1")
  skew = config.domain_skew
  if not is_number(skew) or not 0 <= skew < np.inf:
    raise ConfigError(f"config.data.domain_skew={skew!r} must be a finite number >= 0")
  split = config.split
  if (not isinstance(split, (tuple, list)) or len(split) != 3
      or not all(is_number(f) and f > 0 for f in split) or abs(sum(split) - 1) > 1e-6):
    raise ConfigError(f"config.data.split={split!r} must be three positive fractions "
                      "(train, validation, test) summing to 1, e.g. (0.8, 0.1, 0.1)")
  bounds = _bounds(int(config.num_rows), split)
  empty = [name for name, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]) if hi <= lo]
  if empty:
    enough = math.ceil(2 / min(split))  # every split then gets >= 2 - 1 rows
    raise ConfigError(f"config.data.num_rows={config.num_rows} leaves the {' and '.join(empty)} "
                      f"split empty with config.data.split={tuple(split)}; raise num_rows "
                      f"to at least {enough}")


def _bounds(num_rows: int, split) -> np.ndarray:
  """Row offsets where the train, validation and test ranges start and end."""
  return np.round(np.cumsum([0.0] + list(split)) * num_rows).astype(int)


def generate(config: ml_collections.ConfigDict) -> tuple[FeatureSchema, dict[str, np.ndarray]]:
  """All rows, in one columnar dict with `true_prob` [N, T] beside the batch columns."""
  check_config(config)
  rng = np.random.default_rng(config.seed)
  n, num_d, num_t, k = (int(config.num_rows), int(config.num_domains),
                        int(config.num_tasks), int(config.latent_dim))
  vocabs = [int(v) for v in config.vocab_sizes]

  domain_p = np.exp(-config.domain_skew * np.arange(num_d))
  domain = rng.choice(num_d, size=n, p=domain_p / domain_p.sum()).astype(np.int32)

  ids, z = [], np.zeros((n, k))
  scale = 1.0 / np.sqrt(len(vocabs))
  for vocab in vocabs:
    popularity = 1.0 / np.sqrt(np.arange(1, vocab + 1))
    column = rng.choice(vocab, size=n, p=popularity / popularity.sum())
    z += rng.normal(0.0, scale, (vocab, k))[column]
    ids.append(column)
  user_vec = rng.normal(0.0, 1.0, (vocabs[0], k))[ids[0]]
  item_vec = rng.normal(0.0, 1.0, (vocabs[1], k))[ids[1]]
  interaction = np.sum(user_vec * item_vec, axis=1) / np.sqrt(k)

  dense = rng.normal(0.0, 1.0, (n, int(config.num_dense)))
  c_shared = rng.normal(0.0, 1.0, k)
  c_domain = rng.normal(0.0, 0.7, (num_d, k))
  c_task = rng.normal(0.0, 0.7, (num_t, k))
  w_dense = rng.normal(0.0, 0.3, (int(config.num_dense), num_t))
  bias = rng.normal(-0.5, 0.5, (num_d, num_t))

  logits = (z @ c_shared)[:, None] + np.einsum("nk,nk->n", z, c_domain[domain])[:, None]
  logits = logits + z @ c_task.T + 0.5 * interaction[:, None] + dense @ w_dense
  logits = logits + bias[domain]
  true_prob = 1.0 / (1.0 + np.exp(-logits))
  labels = (rng.random((n, num_t)) < true_prob).astype(np.float32)

  schema = FeatureSchema(
      sparse_names=[f"f{i}" for i in range(len(vocabs))] + ["domain"],
      vocab_sizes=vocabs + [num_d],
      dense_names=[f"dense{i}" for i in range(int(config.num_dense))],
      domain_names=[f"synthetic_domain{d}" for d in range(num_d)],
      task_names=[f"synthetic_task{t}" for t in range(num_t)],
      # The module's name when the first schemas were recorded, kept so that
      # the schemas of the same config stay equal.
      source={"generator": "m3oe_jax.data.synthetic", "config": config.to_dict()},
  )
  columns = {
      "sparse": np.stack(ids + [domain], axis=1).astype(np.int32),
      "dense": dense.astype(np.float32),
      "domain": domain,
      "labels": labels,
      "true_prob": true_prob.astype(np.float32),
  }
  return schema, columns


def load(config: ml_collections.ConfigDict) -> Dataset:
  """The dataset of `config` (the registry's entry point): `make_dataset`."""
  return make_dataset(config)


def make_dataset(config: ml_collections.ConfigDict) -> Dataset:
  """Rows are i.i.d., so the split takes consecutive ranges of the generated rows."""
  schema, columns = generate(config)
  bounds = _bounds(len(columns["domain"]), config.split)
  splits, true_probs = {}, {}
  for name, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
    splits[name] = ArraySource({k: v[lo:hi] for k, v in columns.items() if k != "true_prob"})
    true_probs[name] = columns["true_prob"][lo:hi]
  return Dataset(schema=schema, splits=splits, true_probs=true_probs)
