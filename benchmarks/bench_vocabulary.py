"""Does `config.data.vocabulary` ('train' vs 'all_rows') change test AUC?

  python benchmarks/bench_vocabulary.py                 # ~3 min on 2 CPU cores
  python benchmarks/bench_vocabulary.py --seeds=0,1,2,3,4 --num_epochs=5

Writes a FAKE MovieLens-1M-format archive (`ml-1m/{ratings,users,movies}.dat`,
generated here, no real data) in which most users of the test split never rate
anything before the temporal training cut: "old" users rate throughout the
time span, "new" users arrive only in its last part (`--late_start` of the
span). Ratings depend on user, movie, the user's age group and occupation and
a gender x genre interaction, so side features predict new users partly.

Then M3oE (`configs/movielens.py:tiny_offline`, temporal 8:1:1 split) is
trained for every seed under both vocabulary options and the test mean AUC
(mean over (domain, task) pairs) is printed as mean ± std over seeds.
'train' maps every user/zip/movie unseen in training to the shared OOV row 0;
'all_rows' (the authors' code) gives each its own row, which training never
updates. Prepared data and run folders go to --workdir (deleted unless --keep).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import pathlib
import shutil
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # pylint: disable=wrong-import-position

AGES = np.array([1, 18, 25, 35, 45, 50, 56])
AGE_P = np.array([0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06])
GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
          "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
T0 = 956_703_932
SPAN_S = 90 * 86_400


def write_late_users(folder: pathlib.Path, *, num_ratings: int, old_users: int,
                     new_users: int, num_movies: int, new_share: float, late_start: float,
                     seed: int) -> pathlib.Path:
  """Writes `<folder>/ml-1m/*.dat`; `new_share` of the ratings are by new users,
  all at times in the last (1 - late_start) of the span."""
  top = folder / "ml-1m"
  top.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  num_users = old_users + new_users
  age = rng.choice(AGES, num_users, p=AGE_P)
  age[:len(AGES)] = AGES  # every age code among the old users
  gender = rng.integers(0, 2, num_users)
  occupation = rng.integers(0, 21, num_users)
  users = [f"{u + 1}::{'FM'[gender[u]]}::{age[u]}::{occupation[u]}::"
           f"{rng.integers(10000, 99999)}" for u in range(num_users)]
  genre = rng.integers(0, len(GENRES), num_movies)
  movies = [f"{m + 1}::Film {m + 1} ({rng.integers(1920, 2001)})::{GENRES[genre[m]]}"
            for m in range(num_movies)]
  u_eff = rng.normal(0, 0.8, num_users)
  m_eff = rng.normal(0, 0.8, num_movies)
  occ_eff = rng.normal(0, 0.5, 21)
  age_eff = {a: e for a, e in zip(AGES, rng.normal(0, 0.4, len(AGES)))}
  gender_genre = rng.normal(0, 0.6, (2, len(GENRES)))
  n_new = int(round(num_ratings * new_share))
  is_new = np.zeros(num_ratings, bool)
  is_new[:n_new] = True
  user = np.where(is_new, old_users + rng.integers(0, new_users, num_ratings),
                  rng.integers(0, old_users, num_ratings))
  movie = rng.integers(0, num_movies, num_ratings)
  start = np.where(is_new, late_start, 0.0)
  ts = T0 + (SPAN_S * (start + (1 - start) * rng.random(num_ratings))).astype(np.int64)
  pair = user.astype(np.int64) * num_movies + movie
  _, first = np.unique(pair, return_index=True)  # one rating per (user, movie)
  keep = np.sort(first)
  user, movie, ts = user[keep], movie[keep], ts[keep]
  score = (3.3 + u_eff[user] + m_eff[movie] + occ_eff[occupation[user]]
           + np.array([age_eff[a] for a in age[user]]) + gender_genre[gender[user],
                                                                     genre[movie]]
           + rng.normal(0, 0.6, len(user)))
  rating = np.clip(np.round(score), 1, 5).astype(np.int64)
  lines = [f"{u + 1}::{m + 1}::{r}::{t}" for u, m, r, t in zip(user, movie, rating, ts)]
  for name, rows in (("ratings.dat", lines), ("users.dat", users), ("movies.dat", movies)):
    (top / name).write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
  return top


def make_config(archive: pathlib.Path, checksum: str, data_dir: pathlib.Path,
                vocabulary: str, seed: int, num_epochs: int, embed_init_std: float = 0.0):
  from configs import movielens as movielens_config  # pylint: disable=g-import-not-at-top
  c = movielens_config.get_config("tiny_offline")
  c.data.archive = str(archive)
  c.data.archive_checksum = checksum
  c.data.data_dir = str(data_dir)
  c.data.vocabulary = vocabulary
  c.seed = seed
  if embed_init_std:
    c.model.embed_init_std = embed_init_std
  if num_epochs:
    c.num_epochs = num_epochs
    c.patience = num_epochs
  return c


def unseen_stats(data_config) -> dict:
  """Rows per split and how much of the test split's users training never saw
  (counted on the 'all_rows' preparation, where unseen users keep distinct ids)."""
  from m3oe_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
  ds = load_dataset(data_config)
  j = ds.schema.sparse_names.index("user_id")
  ids = {k: ds.splits[k].take(np.arange(len(ds.splits[k])))["sparse"][:, j]
         for k in ("train", "validation", "test")}
  train_users = set(ids["train"].tolist())
  test_users = set(ids["test"].tolist())
  unseen = test_users - train_users
  return {"rows": {k: int(len(v)) for k, v in ids.items()},
          "test_users": len(test_users), "test_users_unseen": len(unseen),
          "test_rows_unseen_user": int(np.isin(ids["test"], list(unseen)).sum()),
          "vocab_sizes": dict(zip(ds.schema.sparse_names, ds.schema.vocab_sizes))}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--vocabularies", default="train,all_rows")
  p.add_argument("--num_ratings", type=int, default=20_000)
  p.add_argument("--old_users", type=int, default=400)
  p.add_argument("--new_users", type=int, default=1500)
  p.add_argument("--num_movies", type=int, default=300)
  p.add_argument("--new_share", type=float, default=0.1,
                 help="share of the ratings made by late-arriving users")
  p.add_argument("--late_start", type=float, default=0.93,
                 help="new users rate only after this fraction of the time span")
  p.add_argument("--data_seed", type=int, default=0)
  p.add_argument("--num_epochs", type=int, default=0, help="0: the tiny_offline value")
  p.add_argument("--embed_init_std", type=float, default=0.0,
                 help="0: the config's config.model.embed_init_std (1e-4)")
  p.add_argument("--workdir", default="")
  p.add_argument("--keep", action="store_true")
  p.add_argument("--json", default="", help="also write the results here")
  args = p.parse_args()
  logging.getLogger().setLevel(logging.WARNING)
  logging.getLogger("absl").setLevel(logging.WARNING)

  from m3oe_jax import train  # pylint: disable=g-import-not-at-top
  from m3oe_jax.data import fake_raw  # pylint: disable=g-import-not-at-top

  work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_vocabulary-"))
  work.mkdir(parents=True, exist_ok=True)
  seeds = [int(s) for s in args.seeds.split(",")]
  vocabularies = args.vocabularies.split(",")
  try:
    top = write_late_users(work / "raw", num_ratings=args.num_ratings,
                           old_users=args.old_users, new_users=args.new_users,
                           num_movies=args.num_movies, new_share=args.new_share,
                           late_start=args.late_start, seed=args.data_seed)
    archive = fake_raw.pack_zip(top, work / "ml-1m-late-users.zip")
    checksum = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    results, vocab_sizes = {}, {}
    t_start = time.time()
    s = unseen_stats(make_config(archive, checksum, work / "tfds", "all_rows", 0, 0).data)
    for vocabulary in vocabularies:
      vocab_sizes[vocabulary] = unseen_stats(make_config(
          archive, checksum, work / "tfds", vocabulary, 0, 0).data)["vocab_sizes"]
      for seed in seeds:
        c = make_config(archive, checksum, work / "tfds", vocabulary, seed, args.num_epochs,
                        args.embed_init_std)
        t = time.time()
        r = train.train_and_evaluate(c, str(work / "runs" / f"{vocabulary}_seed{seed}"))
        results[(vocabulary, seed)] = float(r["test"]["mean_auc"])
        print(f"[bench_vocabulary] vocabulary={vocabulary} seed={seed} "
              f"test mean AUC={results[(vocabulary, seed)]:.6f} ({time.time() - t:.0f}s)",
              flush=True)
    print()
    print(f"FAKE MovieLens-format data: {sum(s['rows'].values()):,} ratings "
          f"(train/validation/test {s['rows']['train']:,}/{s['rows']['validation']:,}/"
          f"{s['rows']['test']:,}, temporal 8:1:1); {args.old_users} old + "
          f"{args.new_users} late users, {args.num_movies} movies, data seed "
          f"{args.data_seed}")
    print(f"test users never seen in training: {s['test_users_unseen']}/{s['test_users']} "
          f"({s['test_users_unseen'] / max(s['test_users'], 1):.1%}); test rows with such "
          f"a user: {s['test_rows_unseen_user']}/{s['rows']['test']} "
          f"({s['test_rows_unseen_user'] / max(s['rows']['test'], 1):.1%})")
    print(f"model: M3oE, configs/movielens.py:tiny_offline, embed_init_std "
          f"{args.embed_init_std or c.model.embed_init_std:g}; seeds {seeds}; "
          f"{time.time() - t_start:.0f}s in all")
    print()
    print(f"{'vocabulary':<12}{'user_id vocab':>14}{'test mean AUC':>24}   per seed")
    table = {}
    for v in vocabularies:
      aucs = np.array([results[(v, seed)] for seed in seeds])
      table[v] = {"mean": float(aucs.mean()), "std": float(aucs.std(ddof=1)) if len(aucs) > 1
                  else 0.0, "per_seed": aucs.tolist(),
                  "user_id_vocab": vocab_sizes[v]["user_id"]}
      print(f"{v:<12}{table[v]['user_id_vocab']:>14}"
            f"{table[v]['mean']:>15.6f} ± {table[v]['std']:.6f}   "
            + " ".join(f"{a:.6f}" for a in aucs))
    if len(vocabularies) == 2:
      a, b = vocabularies
      d = np.array([results[(b, s_)] - results[(a, s_)] for s_ in seeds])
      print(f"paired difference {b} - {a}: {d.mean():+.6f} ± "
            f"{d.std(ddof=1) if len(d) > 1 else 0.0:.6f} (same seeds)")
    if args.json:
      pathlib.Path(args.json).write_text(json.dumps(
          {"args": vars(args), "data": s, "vocab_sizes": vocab_sizes, "results": table},
          indent=2))
  finally:
    if not args.keep and not args.workdir:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
