"""The grid of runs behind Table 2 of the M3oE paper, for `python -m m3oe_jax.sweep`.

`--config=configs/sweeps/table2.py:ARG`, ARG comma-separated (config_utils.parse_arg):
  movielens   Table 2 on MovieLens-1M (`configs/movielens.py`): 15 rows, 5 seeds.
  kuairand    the same on KuaiRand-Pure (`configs/kuairand.py`).
  tiny        a smoke grid on `configs/synthetic.py:tiny` (offline, a few minutes on a
              CPU): M3oE-MDMT, MMoE-MTL and STAR-MDL, 2 seeds (12 runs).
Options:
  data=VARIANT      the dataset config's argument, e.g. `movielens,data=tiny_offline`
                    runs the whole Table 2 grid on the tiny FAKE MovieLens files.
  seeds=N           the first N seeds of 2022..2026 (or `seeds=2022+2024`: these seeds).
  epochs=N          override `num_epochs` of every run (smoke runs).
  runs=LABEL+...    keep only these rows, by label `MODEL-KIND` (`m3oe-mdmt+mmoe-mtl`).

A row of the table is (model, kind); the kinds are the paper's training variants
(`docs/models.md`, spec `baselines.md` §2):
  single  one model per (domain, task), D*T runs   `--config.variant.domains='(d,)'
                                                    --config.variant.tasks='(t,)'`
  mtl     -MTL, one model per domain, D runs        `--config.variant.domains='(d,)'`
  mdl     -MDL, one model per task, T runs          `--config.variant.tasks='(t,)'`
  mdmt    -MDMT, one model for everything, 1 run
each for every seed. A run is named `MODEL-KIND/PART/seedSEED` (PART: `d0t1`, `d0`,
`t1` or `all`), which is also its sub-workdir under the sweep's --workdir.

Each run's config is `get_config("<dataset.arg>,model=MODEL")` of `dataset.path`
(so a baseline gets the baselines' training setup, M3oE its own), then `seed`, the
variant, `overrides` (every run) and the run's own overrides (an optional third
element of its `runs` entry), each a tuple of ("dotted.field", value) pairs.
"""

import ml_collections

from m3oe_jax.config_utils import parse_arg

KINDS = ("single", "mtl", "mdl", "mdmt")
PAPER_SEEDS = (2022, 2023, 2024, 2025, 2026)

# The rows of Table 2 (spec baselines.md §6), in the paper's order.
TABLE2_RUNS = (
    ("mlp", "single"),
    ("shared_bottom", "mtl"),
    ("ple", "mtl"),
    ("mmoe", "mtl"),
    ("adatt", "mtl"),
    ("adatt_sp", "mtl"),
    ("shared_bottom", "mdl"),
    ("mmoe", "mdl"),
    ("ple", "mdl"),
    ("star", "mdl"),
    ("shared_bottom", "mdmt"),
    ("mmoe", "mdmt"),
    ("ple", "mdmt"),
    ("m2m", "mdmt"),
    ("m3oe", "mdmt"),
)

TINY_RUNS = (
    ("m3oe", "mdmt"),
    ("mmoe", "mtl"),
    ("star", "mdl"),
)

DATASETS = {
    "movielens": ("configs/movielens.py", ""),
    "kuairand": ("configs/kuairand.py", ""),
    "tiny": ("configs/synthetic.py", "tiny"),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  words, options = parse_arg(arg, tuple(DATASETS), ("data", "seeds", "epochs", "runs"),
                             "configs/sweeps/table2.py")
  if len(words) != 1:
    raise ValueError(f"configs/sweeps/table2.py: pick one of {tuple(DATASETS)}, got "
                     f"{sorted(words)}")
  which = words.pop()
  path, data_arg = DATASETS[which]
  config = ml_collections.ConfigDict()
  config.name = f"table2-{which}"
  config.dataset = ml_collections.ConfigDict()
  config.dataset.path = path  # relative to the repository root (or the current directory)
  config.dataset.arg = options.get("data", data_arg)
  runs = TINY_RUNS if which == "tiny" else TABLE2_RUNS
  if "runs" in options:
    wanted = options["runs"].split("+")
    known = {f"{m}-{k}": (m, k) for m in _models() for k in KINDS}
    unknown = [w for w in wanted if w not in known]
    if unknown:
      raise ValueError(f"configs/sweeps/table2.py: unknown runs {unknown}; a run is "
                       f"MODEL-KIND with KIND one of {KINDS}")
    runs = tuple(known[w] for w in wanted)
  config.runs = runs
  seeds = PAPER_SEEDS[:2] if which == "tiny" else PAPER_SEEDS
  if "seeds" in options:
    value = options["seeds"]
    seeds = (tuple(int(s) for s in value.split("+")) if "+" in value or int(value) > 100
             else PAPER_SEEDS[:int(value)])
  config.seeds = tuple(seeds)
  # (("dotted.field", value), ...) applied to every run after its variant and seed.
  overrides = ()
  if "epochs" in options:
    overrides += (("num_epochs", int(options["epochs"])),)
  config.overrides = overrides
  # The grid's shape; 0: read from the dataset config (see m3oe_jax/sweep.py).
  config.num_domains = 0
  config.num_tasks = 0
  return config


def _models():
  from m3oe_jax.models import MODELS
  return tuple(MODELS)
