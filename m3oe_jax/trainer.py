"""The jitted steps of a run, bound to its model, mesh and data, and its evaluation."""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from m3oe_jax import metrics, optim, sharding, step
from m3oe_jax.data import pipeline
from m3oe_jax.models import build_model, init_params


class Trainer:
  """The jitted steps of one run, bound to its model, mesh and data."""

  def __init__(self, config, dataset: pipeline.Dataset, mesh):
    self.config = config
    self.dataset = dataset
    self.schema = dataset.schema
    self.mesh = mesh
    self.model = build_model(config.model, self.schema)
    for name in ("batch_size", "eval_batch_size"):
      sharding.check_batch_size(int(config[name]), mesh, name)
    sharding.check_table_rows(int(config.model.get("embed_rows_multiple", 1)), mesh,
                              config.mesh.embedding_axis)

    params_shape = jax.eval_shape(
        lambda rng: init_params(self.model, self.schema, rng), jax.random.key(0))
    self.optimizers = optim.make_optimizers(config.optimizer, params_shape)
    self.state_shape = jax.eval_shape(
        lambda p: step.create_train_state(p, self.optimizers), params_shape)
    self.state_sharding = sharding.state_shardings(self.state_shape, mesh,
                                                   config.mesh.embedding_axis)
    self.params_sharding = self.state_sharding.params
    rows = sharding.batch_sharding(mesh)
    num_domains = self.schema.num_domains
    self.model_step = jax.jit(
        step.make_model_step(self.model, self.optimizers, config.optimizer.train_loss,
                             num_domains),
        in_shardings=(self.state_sharding, rows),
        out_shardings=(self.state_sharding, sharding.replicated(mesh)), donate_argnums=0)
    self.arch_step = jax.jit(
        step.make_arch_step(self.model, self.optimizers, config.optimizer.arch_loss,
                            num_domains),
        in_shardings=(self.state_sharding, rows),
        out_shardings=(self.state_sharding, sharding.replicated(mesh)), donate_argnums=0)
    self.eval_step = jax.jit(step.make_eval_step(self.model),
                             in_shardings=(self.params_sharding, rows), out_shardings=rows)
    self._check_memory_budget(int(config.mesh.get("device_memory_budget_bytes", 0)))

  def _check_memory_budget(self, budget: int) -> None:
    """Logs the per-device footprint; refuses a step that needs more than `budget`
    bytes of one device (0: no budget), before any array is allocated."""
    state_bytes = sharding.bytes_per_device(self.state_shape, self.state_sharding)
    logging.info("train state: %.1f MiB per device", state_bytes / 2**20)
    if budget <= 0:
      return
    batch = {k: jax.ShapeDtypeStruct((self.config.batch_size,) + v.shape[1:], v.dtype)
             for k, v in self.dataset.splits["train"].take(np.arange(1)).items()}
    batch["mask"] = jax.ShapeDtypeStruct((self.config.batch_size,), np.float32)
    compiled = self.model_step.lower(self.state_shape, batch).compile()
    self.model_step = compiled  # every train batch has this shape: no second compile
    needed = sharding.compiled_bytes_per_device(compiled) or state_bytes
    logging.info("train step: %.1f MiB per device (budget %.1f MiB)", needed / 2**20,
                 budget / 2**20)
    if needed > budget:
      raise ValueError(
          f"the train step needs {needed:,} bytes per device (its train state alone "
          f"{state_bytes:,}), over config.mesh.device_memory_budget_bytes={budget:,}. "
          "Row-shard the embedding tables over more devices (config.mesh.embedding_axis "
          "and the size of that axis) or shrink the batch.")

  def abstract_state(self):
    """Shapes, dtypes and shardings of the train state: a target to restore into."""
    return jax.tree.map(
        lambda leaf, leaf_sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                         sharding=leaf_sharding),
        self.state_shape, self.state_sharding)

  def initial_state(self, seed: int):

    def init(rng):
      params = init_params(self.model, self.schema, rng)
      return step.create_train_state(params, self.optimizers)

    return jax.jit(init, out_shardings=self.state_sharding)(jax.random.key(seed))

  def put(self, batch):
    return sharding.put_batch(batch, self.mesh)

  def train_batch(self, position: int):
    return self.put(pipeline.shuffled_batch(
        self.dataset.splits["train"], self.config.batch_size, self.config.seed, position,
        jax.process_index(), jax.process_count()))

  def arch_batch(self, arch_steps: int):
    """The architecture step's batch: training data for reference/paper, validation
    data for darts, each from a stream of its own."""
    split = "validation" if self.config.optimizer.schedule == "darts" else "train"
    return self.put(pipeline.shuffled_batch(
        self.dataset.splits[split], self.config.batch_size, self.config.seed + 1,
        arch_steps, jax.process_index(), jax.process_count()))

  def evaluate(self, params, split: str) -> tuple[dict, np.ndarray | None]:
    """Metrics over the whole split, from every process's rows, identical on all
    processes; and the mean gate weight per (domain, task, expert)."""
    source = self.dataset.splits[split]
    outputs = []
    for batch in pipeline.ordered_batches(source, self.config.eval_batch_size,
                                          jax.process_index(), jax.process_count()):
      outputs.append((self.eval_step(params, self.put(batch)), batch))
    columns = {"probs": [], "gates": [], "labels": [], "domain": []}
    for (probs, gates), batch in outputs:
      host = {"labels": batch["labels"], "domain": batch["domain"], "mask": batch["mask"]}
      if jax.process_count() > 1:
        host = multihost_utils.process_allgather(host, tiled=True)
      probs, gates = multihost_utils.process_allgather((probs, gates), tiled=True)
      real = host["mask"] > 0
      for name, value in (("probs", probs), ("gates", gates), ("labels", host["labels"]),
                          ("domain", host["domain"])):
        columns[name].append(None if value is None else np.asarray(value)[real])
    probs, labels, domain = (np.concatenate(columns[k]) for k in ("probs", "labels", "domain"))
    result = metrics.evaluate_predictions(probs, labels, domain, self.schema.domain_names,
                                          self.schema.task_names)
    gate_means = None
    if columns["gates"][0] is not None:
      gates = np.concatenate(columns["gates"])
      gate_means = np.stack([
          gates[domain == d].mean(0) if np.any(domain == d) else np.full(gates.shape[1:], np.nan)
          for d in range(self.schema.num_domains)])                   # [D, T, E]
    return result, gate_means
