"""A run's model on its mesh: `Evaluator` (the jitted eval step and the global
evaluation of a split) and `Trainer` (an Evaluator plus the optimizers, the train
state and the jitted train and architecture steps)."""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from m3oe_jax import losses, metrics, optim, sharding, step
from m3oe_jax.data import pipeline
from m3oe_jax.data.row_order import RecordedOrder
from m3oe_jax.errors import ConfigError
from m3oe_jax.models import build_model, init_variables, read_weights_file
from m3oe_jax.models.base import per_domain_means


class Evaluator:
  """The model of a run and its jitted eval step on a mesh; no optimizer."""

  def __init__(self, config, dataset: pipeline.Dataset, mesh):
    self.config = config
    self.dataset = dataset
    self.schema = dataset.schema
    self.mesh = mesh
    self.model = build_model(config.model, self.schema)
    sharding.check_batch_size(int(config.eval_batch_size), mesh, "eval_batch_size")
    sharding.check_table_rows(int(config.model.get("embed_rows_multiple", 1)), mesh,
                              config.mesh.embedding_axis)
    self.variables_shape = jax.eval_shape(
        lambda rng: init_variables(self.model, self.schema, rng), jax.random.key(0))
    self.tables = type(self.model).TABLE_SCOPES
    sharding.check_tables_found(self.variables_shape["params"], config.mesh.embedding_axis,
                                self.tables, config.model.name)
    self.variables_sharding = self.shardings(self.variables_shape)
    self.batch_sharding = sharding.batch_sharding(mesh)
    self.eval_step = jax.jit(step.make_eval_step(self.model),
                             in_shardings=(self.variables_sharding, self.batch_sharding))

  def shardings(self, tree_shape):
    """A sharding per leaf: tables row-sharded over the embedding axis, the rest
    replicated."""
    return sharding.state_shardings(tree_shape, self.mesh, self.config.mesh.embedding_axis,
                                    self.tables)

  def put(self, batch):
    return sharding.put_batch(batch, self.mesh)

  def evaluate(self, variables, split: str) -> tuple[dict, dict]:
    """Metrics over the whole split, from every process's rows, identical on all
    processes; and the model's diagnostics: each per-example one averaged over
    each domain's rows ([D, ...]), each dict of scalars as it is."""
    source = self.dataset.splits[split]
    outputs = []
    for batch in pipeline.ordered_batches(source, self.config.eval_batch_size,
                                          jax.process_index(), jax.process_count()):
      outputs.append((self.eval_step(variables, self.put(batch)), batch))
    columns = {"probs": [], "labels": [], "domain": []}
    per_example, scalars = {}, {}
    for (probs, aux), batch in outputs:
      host = {"labels": batch["labels"], "domain": batch["domain"], "mask": batch["mask"]}
      if jax.process_count() > 1:
        host = multihost_utils.process_allgather(host, tiled=True)
      examples = {k: v for k, v in aux.items() if not isinstance(v, dict)}
      probs, examples = multihost_utils.process_allgather((probs, examples), tiled=True)
      real = host["mask"] > 0
      columns["probs"].append(np.asarray(probs)[real])
      columns["labels"].append(host["labels"][real])
      columns["domain"].append(host["domain"][real])
      for name, value in examples.items():
        per_example.setdefault(name, []).append(np.asarray(value)[real])
      scalars = {k: jax.device_get(v) for k, v in aux.items() if isinstance(v, dict)}
    probs, labels, domain = (np.concatenate(columns[k]) for k in ("probs", "labels", "domain"))
    result = metrics.evaluate_predictions(probs, labels, domain, self.schema.domain_names,
                                          self.schema.task_names)
    diagnostics = {name: per_domain_means(np.concatenate(parts), domain,
                                          self.schema.num_domains)
                   for name, parts in per_example.items()}
    diagnostics.update({name: {k: float(v) for k, v in values.items()}
                        for name, values in scalars.items()})
    return result, diagnostics


class Trainer(Evaluator):
  """An Evaluator plus the optimizers, train state and jitted steps of one run."""

  def __init__(self, config, dataset: pipeline.Dataset, mesh):
    sharding.check_batch_size(int(config.batch_size), mesh, "batch_size")
    super().__init__(config, dataset, mesh)
    self._orders = {}
    optim.check_task_weights(config.optimizer, self.schema.num_tasks)
    self.task_weighting = config.optimizer.get("task_weighting", "fixed")
    self.task_weights = tuple(config.optimizer.get("task_weights", ()))
    variables_shape = jax.eval_shape(self._with_task_weighting, self.variables_shape)
    steps_per_epoch = pipeline.num_batches(len(dataset.splits["train"]), config.batch_size)
    self.optimizers = optim.make_optimizers(config.optimizer, variables_shape["params"],
                                            steps_per_epoch)
    self.schedule = self.optimizers.schedule
    self._check_recorded_orders()
    if self.schedule != config.optimizer.schedule:
      logging.info("model %r has no architecture weights: bilevel schedule %r, not %r",
                   config.model.name, self.schedule, config.optimizer.schedule)
    self.state_shape = jax.eval_shape(
        lambda v: step.create_train_state(v, self.optimizers), variables_shape)
    self.state_sharding = self.shardings(self.state_shape)
    self._init = jax.jit(
        lambda rng: step.create_train_state(
            self._with_task_weighting(init_variables(self.model, self.schema, rng)),
            self.optimizers),
        out_shardings=self.state_sharding)
    num_domains, num_tasks = self.schema.num_domains, self.schema.num_tasks
    train_loss = losses.resolve(config.optimizer.train_loss, num_domains, num_tasks,
                                "train_loss")
    arch_loss = losses.resolve(config.optimizer.arch_loss, num_domains, num_tasks, "arch_loss")
    weighting = (self.task_weights, self.task_weighting)
    model_step = step.make_model_step(self.model, self.optimizers, train_loss, num_domains,
                                      *weighting)
    self.model_step = jax.jit(
        model_step, in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=(self.state_sharding, sharding.replicated(mesh)), donate_argnums=0)
    self.arch_step = jax.jit(
        step.make_arch_step(self.model, self.optimizers, arch_loss, num_domains, *weighting),
        in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=(self.state_sharding, sharding.replicated(mesh)), donate_argnums=0)
    # The training loop's step: model steps over batches stacked [k, ...], one
    # call for k of them (k also passed as a number: `step.make_multi_step`).
    self.multi_step = jax.jit(
        step.make_multi_step(model_step),
        in_shardings=(self.state_sharding, sharding.stacked_batch_sharding(mesh),
                      sharding.replicated(mesh)),
        out_shardings=(self.state_sharding, sharding.replicated(mesh)), donate_argnums=0)
    self._check_memory_budget(int(config.mesh.get("device_memory_budget_bytes", 0)))

  def _with_task_weighting(self, variables: dict) -> dict:
    """`variables` with, for task weighting 'uncertainty', the log-variances (0 at
    the start) in params[losses.WEIGHTING_SCOPE]."""
    if self.task_weighting != "uncertainty":
      return variables
    log_var = jax.numpy.zeros((self.schema.num_tasks,), jax.numpy.float32)
    params = {**variables["params"], losses.WEIGHTING_SCOPE: {"log_var": log_var}}
    return {**variables, "params": params}

  def task_weight_scalars(self, state) -> dict[str, float]:
    """{'task_weight/<task>': the weight of that task's loss now}: w_t, times
    exp(-s_t) for task weighting 'uncertainty'; {} for the default weighting."""
    if self.task_weighting != "uncertainty" and not self.task_weights:
      return {}
    weights = np.asarray(self.task_weights or (1.0,) * self.schema.num_tasks, np.float32)
    if self.task_weighting == "uncertainty":
      log_var = state.params[losses.WEIGHTING_SCOPE]["log_var"]
      weights = weights * np.exp(-np.asarray(jax.device_get(log_var)))
    return {f"task_weight/{task}": float(w) for task, w in zip(self.schema.task_names, weights)}

  def _check_memory_budget(self, budget: int) -> None:
    """Logs the per-device footprint; refuses a step that needs more than `budget`
    bytes of one device (0: no budget), before any array is allocated."""
    state_bytes = sharding.bytes_per_device(self.state_shape, self.state_sharding)
    logging.info("train state: %.1f MiB per device", state_bytes / 2**20)
    if budget <= 0:
      return
    # The training loop's call: `steps_per_call` batches stacked.
    rows = (int(self.config.get("steps_per_call", 1)), self.config.batch_size)
    batch = {k: jax.ShapeDtypeStruct(rows + v.shape[1:], v.dtype)
             for k, v in self.dataset.splits["train"].take(np.arange(1)).items()}
    batch["mask"] = jax.ShapeDtypeStruct(rows, np.float32)
    compiled = self.multi_step.lower(self.state_shape, batch,
                                     jax.ShapeDtypeStruct((), np.int32)).compile()
    needed = sharding.compiled_bytes_per_device(compiled) or state_bytes
    logging.info("train step: %.1f MiB per device (budget %.1f MiB)", needed / 2**20,
                 budget / 2**20)
    if needed > budget:
      raise ConfigError(
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
    """The state at step 0: the model initialised from `seed`, or the weights of
    `config.init_weights` (an .npz in the exchange layout) when set."""
    if not self.config.get("init_weights", ""):
      return self._init(jax.random.key(seed))
    variables = read_weights_file(self.config.init_weights, self.variables_shape)
    return jax.jit(
        lambda v: step.create_train_state(self._with_task_weighting(v), self.optimizers),
        out_shardings=self.state_sharding)(variables)

  def _check_recorded_orders(self) -> None:
    """Refuses, before compiling, an order file (`config.train_order`) without a
    permutation the run will read: each training epoch's and, for the schedules
    with an architecture step on training data, each of that stream's epochs."""
    if not self.config.get("train_order", ""):
      return
    per_epoch = pipeline.num_batches(len(self.dataset.splits["train"]), self.config.batch_size)
    needed = {"train": int(self.config.num_epochs)}
    if self.schedule in ("reference", "paper"):  # one architecture batch per epoch
      needed["arch"] = (int(self.config.num_epochs) - 1) // per_epoch + 1
    for stream, epochs in needed.items():
      order = self._recorded_order(stream)
      for epoch in range(epochs):
        order(epoch)

  def _recorded_order(self, stream: str):
    """The epochs' row orders of `stream` from `config.train_order`; None: seeded."""
    path = self.config.get("train_order", "")
    if not path:
      return None
    if stream not in self._orders:
      self._orders[stream] = RecordedOrder(path, stream, len(self.dataset.splits["train"]))
    return self._orders[stream]

  def train_batch(self, position: int):
    return self.put(pipeline.shuffled_batch(
        self.dataset.splits["train"], self.config.batch_size, self.config.seed, position,
        jax.process_index(), jax.process_count(), self._recorded_order("train")))

  def train_batches(self, position: int, count: int):
    """Batches `position` .. `position + count - 1` of the training stream,
    stacked [count, batch, ...] on the mesh: the input of `multi_step`."""
    return sharding.put_stacked_batch(pipeline.shuffled_batches(
        self.dataset.splits["train"], self.config.batch_size, self.config.seed, position,
        count, jax.process_index(), jax.process_count(), self._recorded_order("train")),
        self.mesh)

  def arch_batch(self, arch_steps: int):
    """The architecture step's batch: training data for reference/paper, validation
    data for darts, each from a stream of its own."""
    split = "validation" if self.schedule == "darts" else "train"
    order = self._recorded_order("arch") if split == "train" else None
    return self.put(pipeline.shuffled_batch(
        self.dataset.splits[split], self.config.batch_size, self.config.seed + 1,
        arch_steps, jax.process_index(), jax.process_count(), order))
