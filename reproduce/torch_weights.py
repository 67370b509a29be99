"""Weight exchange between the authors' PyTorch models and the flat exchange layout.

Use under a Python that has torch and the authors' checkouts on ``sys.path``
(``MDMTRec`` from the M3oE release, ``HAMUR`` from zhangzj2114/mdmt).  This module only
imports numpy at top level; torch is imported inside the functions that need it.

Exchange layout: docs/models.md (each model's weight names) and tests/assets/golden/
(files in it).  Kernels are ``[in, out]``,
per-head weights are stacked ``[D, T, ...]`` where head (d, t) is the authors' flat index
``i = t*D + d``, experts are stacked on a leading axis, BatchNorm running statistics are
``batch_stats/<block>/bn_mean|bn_var``.

How it works: ``exchange_table`` maps every tensor name of the torch ``state_dict``
(except ``num_batches_tracked``) to a ``Slot``: the exchange name, the shape of the stack
it belongs to, its index in that stack, and how the tensor is transformed (transposed for
``nn.Linear`` weights, ``[1] -> []`` for the architecture logits).  The same table is
applied to any dict of tensors keyed by torch names: weights, Adam moments, gradients.

Functions:
  to_exchange(kind, model, num_domains, num_tasks, sparse_names)       -> {name: np.ndarray}
  from_exchange(kind, model, named, num_domains, num_tasks, sparse_names)  (in place, strict)
  adam_state_to_exchange(kind, model, optimizer, num_domains, num_tasks, sparse_names)
  adam_state_from_exchange(kind, model, optimizer, state, num_domains, num_tasks, sparse_names)

``kind`` is one of "m3oe" (MDMTRec ``MDMTRec``), "mmoe" (HAMUR adapter ``MMOE``, tower norm
LayerNorm or BatchNorm1d, detected from the built module), "ple" (HAMUR baseline ``PLE``,
n_level = 1, one hidden layer per expert / tower), "star" (HAMUR adapter ``STAR``).

``sparse_names`` lists the exchange names of the embedding tables in the model's feature
order (the domain feature last); the torch model keys its tables by ``str(feature.name)``,
which the authors set to the column index.  ``None`` keeps those keys as names.

Run ``python reproduce/torch_weights.py`` for the self-check against the golden files.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple

import numpy as np

KINDS = ("m3oe", "mmoe", "ple", "star")


class Slot(NamedTuple):
  name: str  # exchange name
  prefix: tuple  # shape of the stack this tensor belongs to; () for unstacked
  index: tuple  # index in that stack
  transform: str  # "none", "T" (2-D transpose), "scalar" ([1] <-> [])


# --------------------------------------------------------------------------------------
# the mapping tables
# --------------------------------------------------------------------------------------

_LINEAR_LEAF = {"weight": ("kernel", "T"), "bias": ("bias", "none")}
_LN_LEAF = {"weight": "ln_scale", "bias": "ln_bias"}
_BN_LEAF = {"weight": "bn_scale", "bias": "bn_bias"}
_BN_STAT = {"running_mean": "bn_mean", "running_var": "bn_var"}


def _head(i: int, D: int) -> tuple:
  """The authors' flat head index i = t*D + d  ->  (d, t)."""
  return (i % D, i // D)


def _module_rules(kind: str, model, D: int, T: int) -> list:
  """Rules for module paths: (regex, f(match) -> (block, prefix, index, role)).

    role: "linear" (nn.Linear), "norm" (LayerNorm or BatchNorm1d, decided by type),
    "embedding" (nn.Embedding; block is the table key)."""
  G = D * T
  rules = [(r"embedding\.embed_dict\.(.+)", lambda m: (m.group(1), (), (), "embedding"))]

  def block2(path, block, prefix=(), index=None):
    # a two-module Block: <path>.0 is the Linear, <path>.1 the norm
    return (path + r"\.(0|1)", lambda m: (block, prefix, () if index is None else index(m), "linear"
                                          if m.group(m.lastindex) == "0" else "norm"))

  def expert_bank(attr, block, n):
    # ModuleList of MLP_N: <attr>.<e>.domain_specific.<3k + {0: Linear, 1: LN, 2: ReLU}>
    def f(m):
      e, j = int(m.group(1)), int(m.group(2))
      if j % 3 == 2:
        return None
      return (f"{block}/layer{j // 3}", (n,), (e,), "linear" if j % 3 == 0 else "norm")

    return (rf"{attr}\.(\d+)\.domain_specific\.(\d+)", f)

  def towers(attr):
    # ModuleList of Sequential(Linear, Norm, ReLU, Linear)
    def f(m):
      i, j = int(m.group(1)), m.group(2)
      block = "towers/out" if j == "3" else "towers/hidden"
      return (block, (D, T), _head(i, D), "norm" if j == "1" else "linear")

    return (rf"{attr}\.(\d+)\.(0|1|3)", f)

  gates = (r"gate\.(\d+)\.0", lambda m: ("gates", (D, T), _head(int(m.group(1)), D), "linear"))

  if kind in ("m3oe", "star"):
    rules += [
        block2(r"skip_conn\.domain_specific", "skip"),
        block2(r"star_mlp\.domain_specific", "star_mlp")
    ]
  if kind == "m3oe":
    rules += [
        expert_bank("expert", "shared_experts", len(model.expert)),
        expert_bank("domain_expert", "domain_experts", D),
        expert_bank("task_expert", "task_experts", T), gates,
        towers("tower")
    ]
  elif kind == "mmoe":
    rules += [expert_bank("expert", "experts", len(model.expert)), gates, towers("tower")]
  elif kind == "star":

    def main(m):
      j = int(m.group(1))
      if j % 3 == 2:
        return None
      return (f"main_mlp/layer{j // 3}", (), (), "linear" if j % 3 == 0 else "norm")

    rules += [(r"main_mlp\.domain_specific\.(\d+)", main),
              (r"head\.(0|1|3)", lambda m: ("head/out"
                                            if m.group(1) == "3" else "head/hidden", (), (), "norm"
                                            if m.group(1) == "1" else "linear"))]
  elif kind == "ple":
    if len(model.cgc_layers) != 1:
      raise ValueError(f"ple: only n_level = 1 has an exchange layout, got {len(model.cgc_layers)}")
    cgc = model.cgc_layers[0]
    m_, s_ = cgc.n_expert_specific, cgc.n_expert_shared
    if cgc.domain_num != G:
      raise ValueError(f"ple: model has {cgc.domain_num} heads, expected D*T = {G}")
    role = lambda j: "linear" if j == "0" else "norm"  # MLP: mlp.0 Linear, mlp.1 BN, act, Dropout

    def spec(m):
      q = int(m.group(1))
      return ("specific_experts", (D, T, m_), _head(q // m_, D) + (q % m_,), role(m.group(2)))

    def tower(m):
      i, j = int(m.group(1)), m.group(2)
      return ("towers/out" if j == "4" else "towers/hidden", (D, T), _head(i, D),
              "linear" if j != "1" else "norm")

    rules += [(r"cgc_layers\.0\.experts_specific\.(\d+)\.mlp\.(0|1)", spec),
              (r"cgc_layers\.0\.experts_shared\.(\d+)\.mlp\.(0|1)", lambda m:
               ("shared_experts", (s_,), (int(m.group(1)),), role(m.group(2)))),
              (r"cgc_layers\.0\.gates_specific\.(\d+)\.mlp\.(0|1)", lambda m:
               ("gates", (D, T), _head(int(m.group(1)), D), role(m.group(2)))),
              (r"towers\.(\d+)\.mlp\.(0|1|4)", tower)]
  return rules


def _param_rules(kind: str, D: int) -> dict:
  """Rules for tensors that are not leaves of a standard module: full-name regex -> f(match)."""
  rules = {}
  if kind in ("m3oe", "star"):
    rules.update({
        r"shared_weight":
            lambda m: Slot("star/shared_kernel", (), (), "none"),  # used as x @ W
        r"shared_bias":
            lambda m: Slot("star/shared_bias", (), (), "none"),
        r"slot_weight\.(\d+)":
            lambda m: Slot("star/domain_kernel", (D,), (int(m.group(1)),), "none"),
        r"slot_bias\.(\d+)":
            lambda m: Slot("star/domain_bias", (D,), (int(m.group(1)),), "none"),
    })
  if kind == "m3oe":
    rules[r"_weight_(bal_d|bal_t|exp_d|exp_t)\.deep_weights"] = \
        lambda m: Slot(f"arch/{m.group(1)}", (), (), "scalar")
  return rules


def exchange_table(kind: str, model, num_domains: int, num_tasks: int, sparse_names=None) -> dict:
  """{torch state_dict name: Slot} for every tensor except num_batches_tracked."""
  import torch.nn as nn

  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  D, T = int(num_domains), int(num_tasks)
  if kind == "star" and T != 1:
    raise ValueError("star has one head for all domains: num_tasks must be 1")
  mod_rules = [(re.compile(p), f) for p, f in _module_rules(kind, model, D, T)]
  par_rules = [(re.compile(p), f) for p, f in _param_rules(kind, D).items()]

  table_keys = list(model.embedding.embed_dict.keys())
  if sparse_names is None:
    emb_name = {k: k for k in table_keys}
  else:
    sparse_names = [str(s) for s in sparse_names]
    if len(sparse_names) != len(table_keys):
      raise ValueError(f"{len(sparse_names)} sparse_names for {len(table_keys)} embedding "
                       f"tables (keys {table_keys})")
    emb_name = dict(zip(table_keys, sparse_names))

  table, unmapped = {}, []
  for key in model.state_dict().keys():
    if key.endswith("num_batches_tracked"):
      continue
    slot = None
    for rx, f in par_rules:
      m = rx.fullmatch(key)
      if m:
        slot = f(m)
        break
    if slot is None and "." in key:
      path, leaf = key.rsplit(".", 1)
      for rx, f in mod_rules:
        m = rx.fullmatch(path)
        if not m:
          continue
        r = f(m)
        if r is None:
          break
        block, prefix, index, role = r
        mod = model.get_submodule(path)
        if role == "embedding" and isinstance(mod, nn.Embedding) and leaf == "weight":
          slot = Slot(f"embedding/{emb_name[block]}", (), (), "none")
        elif role == "linear" and isinstance(mod, nn.Linear) and leaf in _LINEAR_LEAF:
          n, tr = _LINEAR_LEAF[leaf]
          slot = Slot(f"{block}/{n}", prefix, index, tr)
        elif role == "norm" and isinstance(mod, nn.LayerNorm) and leaf in _LN_LEAF:
          slot = Slot(f"{block}/{_LN_LEAF[leaf]}", prefix, index, "none")
        elif role == "norm" and isinstance(mod, nn.BatchNorm1d) and leaf in _BN_LEAF:
          slot = Slot(f"{block}/{_BN_LEAF[leaf]}", prefix, index, "none")
        elif role == "norm" and isinstance(mod, nn.BatchNorm1d) and leaf in _BN_STAT:
          slot = Slot(f"batch_stats/{block}/{_BN_STAT[leaf]}", prefix, index, "none")
        break
    if slot is None:
      unmapped.append(key)
    else:
      table[key] = slot
  if unmapped:
    raise ValueError(f"{kind}: torch tensors with no exchange name (model shape not covered "
                     f"by the layout?): {unmapped}")
  seen = {}
  for key, s in table.items():
    k = (s.name, s.index)
    if k in seen:
      raise ValueError(f"{kind}: {key} and {seen[k]} both map to {s.name}{list(s.index)}")
    seen[k] = key
  return table


# --------------------------------------------------------------------------------------
# applying a table to any tensor dict
# --------------------------------------------------------------------------------------


def _to_np(t) -> np.ndarray:
  """A tensor as a float array: float64 stays float64, anything else is float32."""
  if hasattr(t, "detach"):
    t = t.detach().cpu().numpy()
  t = np.asarray(t)
  return t if t.dtype == np.float64 else t.astype(np.float32)


def _forward(a: np.ndarray, tr: str) -> np.ndarray:
  if tr == "T":
    return a.T
  if tr == "scalar":
    if a.shape != (1,):
      raise ValueError(f"expected a [1] tensor for a scalar, got {a.shape}")
    return a.reshape(())
  return a


def _backward(a: np.ndarray, tr: str) -> np.ndarray:
  if tr == "T":
    return a.T
  if tr == "scalar":
    return a.reshape((1,))
  return a


def gather(table: dict, tensors: dict, partial: bool = False) -> dict:
  """Torch-named tensors -> exchange-named arrays (float64 for float64 tensors, else float32).

    With partial=True, torch names absent from ``tensors`` are skipped, but an exchange name
    must then be either fully covered or not at all."""
  groups = {}
  for key, s in table.items():
    groups.setdefault(s.name, []).append((key, s))
  out = {}
  for name, members in groups.items():
    present = [(k, s) for k, s in members if k in tensors]
    missing = [k for k, s in members if k not in tensors]
    if missing and (not partial or present):
      raise KeyError(f"{name}: no value for torch tensor(s) {missing}")
    if not present:
      continue
    prefix = members[0][1].prefix
    elems = {s.index: _forward(_to_np(tensors[k]), s.transform) for k, s in present}
    dtype = next(iter(elems.values())).dtype
    if prefix == ():
      out[name] = np.array(elems[()], dtype=dtype)
      continue
    shapes = {e.shape for e in elems.values()}
    if len(shapes) != 1:
      raise ValueError(f"{name}: stacked tensors differ in shape {shapes}")
    if len(elems) != int(np.prod(prefix)):
      raise ValueError(f"{name}: {len(elems)} tensors for a stack of shape {prefix}")
    arr = np.zeros(prefix + shapes.pop(), dtype=dtype)
    for idx, e in elems.items():
      arr[idx] = e
    out[name] = arr
  return out


def scatter(table: dict,
            named: dict,
            target_shapes: dict | None = None,
            partial: bool = False) -> dict:
  """Exchange-named arrays -> {torch name: float32 array in the torch shape}.

    Strict: every exchange name needed must be present and every name in ``named`` used
    (with partial=True, torch tensors whose exchange name is absent are skipped)."""
  out, used, missing = {}, set(), []
  for key, s in table.items():
    if s.name not in named:
      missing.append(s.name)
      continue
    arr = np.asarray(named[s.name], dtype=np.float32)
    if arr.shape[:len(s.prefix)] != s.prefix:
      raise ValueError(
          f"{s.name}: shape {arr.shape} does not start with the stack shape {s.prefix}")
    a = _backward(arr[s.index], s.transform)
    if target_shapes is not None and tuple(a.shape) != tuple(target_shapes[key]):
      raise ValueError(f"{s.name}{list(s.index)}: gives shape {a.shape} for {key}, "
                       f"torch has {tuple(target_shapes[key])}")
    out[key] = np.ascontiguousarray(a)
    used.add(s.name)
  if missing and not partial:
    raise KeyError(f"exchange names missing: {sorted(set(missing))}")
  extra = sorted(set(named) - used)
  if extra:
    raise KeyError(f"exchange names not used by this model: {extra}")
  return out


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def to_exchange(kind, model, num_domains, num_tasks, sparse_names=None) -> dict:
  """Every weight and BatchNorm running statistic of ``model``, in the exchange layout."""
  table = exchange_table(kind, model, num_domains, num_tasks, sparse_names)
  return gather(table, model.state_dict())


def from_exchange(kind, model, named, num_domains, num_tasks, sparse_names=None) -> None:
  """Load the exchange-layout ``named`` into ``model`` in place (strict both ways)."""
  import torch

  table = exchange_table(kind, model, num_domains, num_tasks, sparse_names)
  sd = model.state_dict()
  vals = scatter(table, dict(named), {k: tuple(sd[k].shape) for k in table})
  with torch.no_grad():
    for key, a in vals.items():
      sd[key].copy_(torch.from_numpy(a).to(dtype=sd[key].dtype, device=sd[key].device))


def _param_names(model) -> dict:
  return {id(p): n for n, p in model.named_parameters()}


def adam_state_to_exchange(kind,
                           model,
                           optimizer,
                           num_domains,
                           num_tasks,
                           sparse_names=None) -> dict:
  """torch Adam/AdamW moments in the exchange layout.

    Returns {"exp_avg": {name: arr}, "exp_avg_sq": {name: arr}, "step": int}.  Only the
    parameters this optimizer holds state for are exported (e.g. a separate architecture
    optimizer holds only arch/*); all of them must share one step count."""
  table = exchange_table(kind, model, num_domains, num_tasks, sparse_names)
  pname = _param_names(model)
  moments = {"exp_avg": {}, "exp_avg_sq": {}}
  steps = set()
  for group in optimizer.param_groups:
    for p in group["params"]:
      st = optimizer.state.get(p)
      if not st:
        continue
      if id(p) not in pname:
        raise ValueError("optimizer holds a parameter that is not in this model")
      for m in moments:
        moments[m][pname[id(p)]] = st[m]
      steps.add(int(float(st["step"])))
  if len(steps) > 1:
    raise ValueError(f"parameters are at different Adam steps: {sorted(steps)}")
  return {m: gather(table, v, partial=True) for m, v in moments.items()} | \
      {"step": steps.pop() if steps else 0}


def adam_state_from_exchange(kind,
                             model,
                             optimizer,
                             state,
                             num_domains,
                             num_tasks,
                             sparse_names=None) -> None:
  """Inverse of adam_state_to_exchange: sets optimizer.state for the parameters named."""
  import torch

  table = exchange_table(kind, model, num_domains, num_tasks, sparse_names)
  params = dict(model.named_parameters())
  table = {k: s for k, s in table.items() if k in params}
  shapes = {k: tuple(params[k].shape) for k in table}
  avg = scatter(table, state["exp_avg"], shapes, partial=True)
  sq = scatter(table, state["exp_avg_sq"], shapes, partial=True)
  if set(avg) != set(sq):
    raise KeyError("exp_avg and exp_avg_sq name different parameters")
  in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
  for key in avg:
    p = params[key]
    if id(p) not in in_opt:
      raise ValueError(f"{key} has a state but is not in this optimizer")
    optimizer.state[p] = {
        "step": torch.tensor(float(state["step"])),
        "exp_avg": torch.from_numpy(avg[key]).to(p),
        "exp_avg_sq": torch.from_numpy(sq[key]).to(p),
    }


# --------------------------------------------------------------------------------------
# self-check against the golden files
# --------------------------------------------------------------------------------------


def _build(kind, z):
  """Build the authors' class for golden file ``z``; return (model, x, sparse_names)."""
  import torch

  if kind == "m3oe":
    from MDMTRec.basic.features import DenseFeature, SparseFeature
  else:
    from HAMUR.basic.features import DenseFeature, SparseFeature
  D, T, emb = int(z["config/D"]), int(z["config/T"]), int(z["config/emb"])
  names = [str(s) for s in z["config/sparse_names"]]
  vocabs = [int(v) for v in z["config/vocabs"]]
  ids, dense = z["inputs/sparse_ids"], z["inputs/dense"]
  Q, S = dense.shape[1], ids.shape[1]
  assert int(z["config/num_dense"]) == Q and len(names) == S
  # columns: dense 0..Q-1, sparse Q..Q+S-1 (domain id last, as x[-1] is the domain)
  x = torch.from_numpy(np.concatenate([dense.T, ids.T.astype(np.float32)], 0).astype(np.float32))
  assert np.array_equal(ids[:, -1], z["inputs/domain"])
  features = ([SparseFeature(Q + k, vocab_size=vocabs[k], embed_dim=emb) for k in range(S)] +
              [DenseFeature(q) for q in range(Q)])
  fcn = [int(v) for v in z["config/fcn_dims"]] if "config/fcn_dims" in z.files else None
  if kind == "m3oe":
    from MDMTRec.models.multi_domain.model import MDMTRec
    model = MDMTRec(features, D, T, fcn, int(z["config/E"]), exp_d=1, exp_t=1, bal_d=1, bal_t=1)
  elif kind == "mmoe":
    from HAMUR.models.multi_domain.adapter import MMOE
    model = MMOE(features, D, T, fcn, int(z["config/E"]))
    if str(z["config/tower_norm"]) != "batch":
      for tw in model.tower:
        tw[1] = torch.nn.LayerNorm(fcn[-1], eps=float(z["config/ln_eps"]))
  elif kind == "star":
    from HAMUR.models.multi_domain.adapter import STAR
    model = STAR(features, D, fcn)
  else:
    from HAMUR.models.multi_domain.baseline import PLE
    model = PLE(features,
                D,
                T,
                n_level=int(z["config/n_level"]),
                n_expert_specific=int(z["config/n_expert_specific"]),
                n_expert_shared=int(z["config/n_expert_shared"]),
                expert_params={"dims": [int(v) for v in z["config/expert_dims"]]},
                tower_params={"dims": [int(v) for v in z["config/tower_dims"]]})
  return model, x, names, D, T


def _golden_named(z):
  named = {k[len("params/"):]: z[k] for k in z.files if k.startswith("params/")}
  named.update({k: z[k] for k in z.files if k.startswith("batch_stats/")})
  return named


def _reset_bn(model):
  import torch.nn as nn
  for m in model.modules():
    if isinstance(m, nn.BatchNorm1d):
      m.reset_running_stats()


def _mdmt_loss(probs, labels, domain, D, T):
  import torch
  import torch.nn.functional as F
  loss = 0.0
  for d in range(D):
    rows = domain == d
    for t in range(T):
      if rows.any():
        loss = loss + F.binary_cross_entropy(probs[rows, t], labels[rows, t])
  return loss


def check_file(path, kind=None):
  """Returns a dict of max abs diffs; raises AssertionError on a failure."""
  import torch

  z = np.load(path)
  kind = kind or (str(z["config/model"]) if "config/model" in z.files else "m3oe")
  model, x, names, D, T = _build(kind, z)
  named = _golden_named(z)
  tol = 1e-5
  res = {}

  from_exchange(kind, model, named, D, T, names)
  back = to_exchange(kind, model, D, T, names)
  assert set(back) == set(named), (set(back) ^ set(named))
  for k in named:
    assert back[k].shape == named[k].shape and np.array_equal(back[k], named[k]), k
  has_bn = any(k.startswith("batch_stats/") for k in named)

  # train-mode forward; for BN models from the initial running stats (0, 1), so the
  # stats after it must equal the stored ones
  model.train()
  if has_bn:
    _reset_bn(model)
  probs = model(x)
  res["probs"] = float(np.abs(_to_np(probs) - z["outputs/probs"]).max())
  if has_bn:
    after = to_exchange(kind, model, D, T, names)
    res["batch_stats"] = max(
        float(np.abs(after[k] - named[k]).max()) for k in named if k.startswith("batch_stats/"))
    from_exchange(kind, model, named, D, T, names)
    model.eval()
    with torch.no_grad():
      res["probs_eval"] = float(np.abs(_to_np(model(x)) - z["outputs/probs_eval"]).max())
    model.train()
    from_exchange(kind, model, named, D, T, names)
    _reset_bn(model)

  # one Adam step on the trainer's loss: exp_avg = 0.1 * grad -> compare with grads/*
  labels = torch.from_numpy(z["inputs/labels"].astype(np.float32))
  domain = torch.from_numpy(z["inputs/domain"].astype(np.int64))
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  opt.zero_grad()
  loss = _mdmt_loss(model(x), labels, domain, D, T)
  res["mdmt_loss"] = abs(float(loss.detach()) - float(z["outputs/mdmt_loss"]))
  loss.backward()
  opt.step()
  st = adam_state_to_exchange(kind, model, opt, D, T, names)
  gkeys = [k for k in z.files if k.startswith("grads/")]
  assert st["step"] == 1 and set(st["exp_avg"]) == {k[len("grads/"):] for k in gkeys}
  res["grads"] = max(
      float((np.abs(st["exp_avg"][k[6:]] / 0.1 - z[k]) / (1 + np.abs(z[k]))).max()) for k in gkeys)
  # the moments round-trip through a fresh optimizer
  opt2 = torch.optim.Adam(model.parameters(), lr=1e-3)
  adam_state_from_exchange(kind, model, opt2, st, D, T, names)
  st2 = adam_state_to_exchange(kind, model, opt2, D, T, names)
  for m in ("exp_avg", "exp_avg_sq"):
    for k, v in st[m].items():
      assert np.array_equal(v, st2[m][k]), (m, k)

  # strictness: a missing and an unknown name are both refused
  for bad in ({
      k: v for k, v in named.items() if k != next(iter(named))
  }, dict(named, **{"bogus/kernel": np.zeros(1)})):
    try:
      from_exchange(kind, model, bad, D, T, names)
    except KeyError:
      pass
    else:
      raise AssertionError("from_exchange accepted a bad name set")

  for k, v in res.items():
    assert v < tol, (path, k, v)
  return res


def main(argv=None):
  import argparse
  import os
  import sys

  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  here = os.path.dirname(os.path.abspath(__file__))
  ap.add_argument("--golden", default=os.path.join(here, "..", "tests", "assets", "golden"))
  ap.add_argument("--authors_m3oe", required=True,
                  help="checkout of Applied-Machine-Learning-Lab/M3oE")
  ap.add_argument("--authors_mdmt", required=True, help="checkout of zhangzj2114/mdmt")
  args = ap.parse_args(argv)
  args.m3oe_src, args.mdmt_src = args.authors_m3oe, args.authors_mdmt
  for p in (args.m3oe_src, args.mdmt_src):
    if p not in sys.path:
      sys.path.insert(0, p)
  import torch
  torch.manual_seed(0)
  torch.set_num_threads(1)
  files = [
      "m3oe_reference.npz", "m3oe_single_domain.npz", "m3oe_single_task.npz", "baselines/mmoe.npz",
      "baselines/mmoe_bn.npz", "baselines/ple.npz", "baselines/star.npz"
  ]
  failed = 0
  for f in files:
    try:
      r = check_file(os.path.join(args.golden, f))
      print(f"PASS {f}: max|dprobs| {r['probs']:.2e}  " +
            "  ".join(f"{k} {v:.2e}" for k, v in r.items() if k != "probs") +
            "  (params round-trip exact)")
    except Exception as e:  # noqa: BLE001
      failed += 1
      print(f"FAIL {f}: {type(e).__name__}: {e}")
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
