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

import ml_collections
import numpy as np

from m3oe_jax.data.pipeline import SPLITS, ArraySource, Dataset
from m3oe_jax.data.schema import FeatureSchema


def _check(config: ml_collections.ConfigDict) -> None:
  positive = ("num_rows", "num_domains", "num_tasks", "latent_dim")
  for name in positive:
    if int(config[name]) < 1:
      raise ValueError(f"config.data.{name} must be >= 1, got {config[name]}")
  if int(config.num_dense) < 0:
    raise ValueError(f"config.data.num_dense must be >= 0, got {config.num_dense}")
  if len(config.vocab_sizes) < 2 or min(config.vocab_sizes) < 1:
    raise ValueError("config.data.vocab_sizes needs at least two features (user, item) "
                     f"of size >= 1, got {list(config.vocab_sizes)}")
  split = list(config.split)
  if len(split) != 3 or min(split) <= 0 or abs(sum(split) - 1) > 1e-6:
    raise ValueError(f"config.data.split={split} must be three positive fractions "
                     "(train, validation, test) summing to 1")
  if config.domain_skew < 0:
    raise ValueError(f"config.data.domain_skew must be >= 0, got {config.domain_skew}")


def generate(config: ml_collections.ConfigDict) -> tuple[FeatureSchema, dict[str, np.ndarray]]:
  """All rows, in one columnar dict with `true_prob` [N, T] beside the batch columns."""
  _check(config)
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


def make_dataset(config: ml_collections.ConfigDict) -> Dataset:
  """Rows are i.i.d., so the split takes consecutive ranges of the generated rows."""
  schema, columns = generate(config)
  n = len(columns["domain"])
  bounds = np.round(np.cumsum([0.0] + list(config.split)) * n).astype(int)
  splits, true_probs = {}, {}
  for name, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
    if hi <= lo:
      raise ValueError(f"config.data: the {name} split of {n} rows is empty; "
                       "raise num_rows or that split's fraction")
    splits[name] = ArraySource({k: v[lo:hi] for k, v in columns.items() if k != "true_prob"})
    true_probs[name] = columns["true_prob"][lo:hi]
  return Dataset(schema=schema, splits=splits, true_probs=true_probs)
