"""reproduce/side_by_side.py without torch: its reading of what the authors' scripts print and
write (canned text in their exact formats), the runs behind each row, the whole authors' side
against stand-in scripts that print and write those formats, our sweep's command (dry run), and
its one-line errors."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

from m3oe_jax.report import reference
from reproduce import side_by_side as sbs

REPO = pathlib.Path(__file__).resolve().parents[1]

# What M3oE's examples/run_movielens.py prints at the end of a run (--task all --domain all).
M3OE_STDOUT = """\
Namespace(dataset_path='/data', model_name='MDMTRec', epoch=2, seed=2022)
train: (80, 8), (80, 2)
epoch: 0 validation: auc: 0.6383932815371556 log loss: 0.6027978079430456
epoch: 1 validation: auc: 0.6621762188674635 log loss: 0.5970674041642393
epoch: 2 validation: auc: 0.6601762188674635 log loss: 0.5990674041642393
validation: best auc: 0.6621762188674635
test auc: 0.7012345678901234 | test logloss: 0.5512345678901234
domain: 0, task: 0, auc: 0.7111111111111111 | test logloss: 0.5111111111111111
domain: 0, task: 1, auc: 0.7122222222222222 | test logloss: 0.5122222222222222
domain: 1, task: 0, auc: 0.7211111111111111 | test logloss: 0.5211111111111111
domain: 1, task: 1, auc: 0.7222222222222222 | test logloss: 0.5222222222222222
domain: 2, task: 0, auc: 0.7311111111111111 | test logloss: 0.5311111111111111
domain: 2, task: 1, auc: 0.7322222222222222 | test logloss: 0.5322222222222222
wrote to file: output/MDMTRec_domain_all_task_all_exp_4_0.01_0.001.csv
"""
M3OE_CSV = """\
auc_d0t0,auc_d0t1,auc_d1t0,auc_d1t1,auc_d2t0,auc_d2t1,log_d0t0,log_d0t1,log_d1t0,log_d1t1,\
log_d2t0,log_d2t1,auc,log,seed,lr_darts,init_exp_d,init_exp_t,exp_d,exp_t,bal_d,bal_t
0.7111,0.7122,0.7211,0.7222,0.7311,0.7322,0.5111,0.5122,0.5211,0.5222,0.5311,0.5322,0.7012,\
0.5512,2022,0.001,1.0,1.0,0.7311,0.7311,0.7311,0.7311
"""
# What mdmt's examples/run_movielens_rank_multi_domain.py writes for `--model_name star --task
# like` (three domains, one task; it prints no per-cell line), after an earlier seed's row.
STAR_CSV = """\
auc_d0t0,auc_d1t0,auc_d2t0,log_d0t0,log_d1t0,log_d2t0,auc,log,seed,n_w,sd_w,st_w,t_w,sigma_w,\
orth_d_w
0.6,0.6,0.6,0.6,0.6,0.6,0.6,0.6,2021,0.01,0.01,1,-1,1,-1
0.7401,0.7502,0.7603,0.4401,0.4502,0.4603,0.75,0.45,2022,0.01,0.01,1,-1,1,-1
"""
STAR_STDOUT = """\
epoch: 0 validation: auc: 0.70 log loss: 0.5
test auc: 0.75 | test logloss: 0.45
wrote to file: output/star_ml1m_domain_all_task_like_exp_4.csv
"""


def test_parse_stdout():
  printed = sbs.parse_stdout(M3OE_STDOUT)
  assert printed["cells"][(1, 0)] == (0.7211111111111111, 0.5211111111111111)
  assert len(printed["cells"]) == 6
  assert printed["total"] == (0.7012345678901234, 0.5512345678901234)
  assert printed["epochs"] == 3 and printed["best_validation_auc"] == 0.6621762188674635
  assert sbs.parse_stdout(STAR_STDOUT)["cells"] == {}


def test_parse_output_csv_takes_the_seeds_last_row():
  cells = sbs.parse_output_csv(STAR_CSV, 2022, "x.csv")
  assert cells == {(0, 0): (0.7401, 0.4401), (1, 0): (0.7502, 0.4502), (2, 0): (0.7603, 0.4603)}
  with pytest.raises(sbs.InputError, match="x.csv: no row for seed 2030"):
    sbs.parse_output_csv(STAR_CSV, 2030, "x.csv")
  assert sbs.parse_output_csv(M3OE_CSV, 2022, "m.csv")[(2, 1)] == (0.7322, 0.5322)


def test_run_result_names_the_cells_of_each_run():
  m3oe, = sbs.authors_runs("m3oe-mdmt")
  result = sbs.run_result(m3oe, M3OE_STDOUT, M3OE_CSV, 2022, "m3oe")
  assert result["cells"]["age_25/click"] == {"auc": 0.7211111111111111,
                                             "logloss": 0.5211111111111111}
  assert result["cells"]["age_35_45_50_56/like"]["auc"] == 0.7322222222222222
  assert result["precision"] == "printed (full)" and result["early_stopped"]
  assert result["pooled"] == {"auc": 0.7012345678901234, "logloss": 0.5512345678901234}
  click, like = sbs.authors_runs("star-mdl")
  assert like.args == ("--model_name", "star", "--task", "like") and like.part == "t1"
  result = sbs.run_result(like, STAR_STDOUT, STAR_CSV, 2022, "star")
  assert result["cells"] == {"age_1_18/like": {"auc": 0.7401, "logloss": 0.4401},
                             "age_25/like": {"auc": 0.7502, "logloss": 0.4502},
                             "age_35_45_50_56/like": {"auc": 0.7603, "logloss": 0.4603}}
  assert result["precision"] == "CSV (4 decimals)" and not result["early_stopped"]
  # -MTL: --domain 2 trains domain 2 alone; its local domain 0 is domain 2.
  mtl = sbs.authors_runs("mmoe-mtl")[2]
  csv_text = "auc_d0t0,auc_d0t1,log_d0t0,log_d0t1,auc,log,seed\n0.7,0.8,0.4,0.3,0.7,0.3,5\n"
  assert sbs.run_result(mtl, "", csv_text, 5, "m")["cells"] == {
      "age_35_45_50_56/click": {"auc": 0.7, "logloss": 0.4},
      "age_35_45_50_56/like": {"auc": 0.8, "logloss": 0.3}}
  # The printed cells and the CSV must agree.
  with pytest.raises(sbs.InputError, match="is not the CSV's"):
    sbs.run_result(m3oe, M3OE_STDOUT, M3OE_CSV.replace("0.7211,", "0.7299,"), 2022, "m3oe")
  with pytest.raises(sbs.InputError, match="no result for cells d2t0"):
    sbs.run_result(click, STAR_STDOUT, STAR_CSV.replace("auc_d2t0", "auc_d3t0")
                   .replace("log_d2t0", "log_d3t0"), 2022, "star")


def test_the_rows_the_authors_code_runs():
  assert [r.repo for r in sbs.authors_runs("m3oe-mdmt")] == ["m3oe"]
  assert sbs.authors_runs("ple-mdmt")[0].args == ("--model_name", "ple")
  assert [r.part for r in sbs.authors_runs("mlp-single")] == [
      "d0t0", "d0t1", "d1t0", "d1t1", "d2t0", "d2t1"]
  assert sbs.authors_runs("mlp-single")[3].args == ("--model_name", "mlp_7", "--domain", "1",
                                                    "--task", "like")
  for label in ("m2m-mdmt", "star-mdmt", "shared_bottom-mtl", "adatt-mtl"):
    with pytest.raises(sbs.InputError, match=f"--rows: no authors' code runs '{label}'"):
      sbs.authors_runs(label)


# ---------------------------------------------------------------------------
# The authors' side end to end, against stand-ins for their scripts.

FAKE_SCRIPT = '''\
import argparse, os
import {package}  # found through PYTHONPATH=<checkout>, as their scripts' imports are
parser = argparse.ArgumentParser()
for flag in ("--dataset_path", "--device", "--model_name", "--task", "--domain"):
  parser.add_argument(flag, default="all")
parser.add_argument("--seed", type=int)
parser.add_argument("--epoch", type=int)
args = parser.parse_args()
assert os.path.isfile(args.dataset_path + "/ml-1m.csv") and args.device == "cpu"
for e in range(args.epoch):
  print("epoch:", e, "validation: auc:", 0.6 + 0.01 * e, "log loss:", 0.6)
domains = [0, 1, 2] if args.domain == "all" else [0]
tasks = [0, 1] if args.task == "all" else [0]
shift = 0.001 * (args.seed - 2022) + (0.05 if args.task == "like" else 0.0)
auc = {{(d, t): 0.7 + 0.01 * d + 0.002 * t + shift for d in domains for t in tasks}}
print(f"test auc: 0.7 | test logloss: 0.5")
{cells_printed}
names = [f"d{{d}}t{{t}}" for d in domains for t in tasks]
path = "output/{csv_name}.csv"
new = not os.path.isfile(path)
with open(path, "a") as f:
  if new:
    f.write(",".join([f"auc_{{n}}" for n in names] + [f"log_{{n}}" for n in names]
                     + ["auc", "log", "seed", "other"]) + "\\n")
  f.write(",".join([str(round(auc[d, t], 4)) for d in domains for t in tasks]
                   + ["0.5"] * len(names) + ["0.7", "0.5", str(args.seed), "1"]) + "\\n")
'''


RATINGS = [("259", "255", "4", "874724710"), ("259", "286", "4", "874724727"),
           ("851", "1", "3", "874727000")]


def write_data(folder, zip_name="ml-100k-as-1m.zip", ratings=RATINGS, csv_ratings=None):
  """A --data folder: the ratings as an ML-1M archive and as the authors' merged CSV."""
  folder.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(folder / zip_name, "w") as z:
    z.writestr("ml-1m/ratings.dat", "".join("::".join(r) + "\n" for r in ratings))
  lines = ["user_id,movie_id,rating,timestamp,title,genres,gender,age,occupation,zip"]
  lines += [",".join(r) + ",T,Drama,M,18,4,48823" for r in (csv_ratings or ratings)]
  (folder / sbs.CSV_NAME).write_text("\n".join(lines) + "\n")
  return folder


def fake_checkouts(tmp_path):
  """Stand-ins for the two checkouts and for a torch Python's modules."""
  m3oe, mdmt, modules = tmp_path / "M3oE", tmp_path / "mdmt", tmp_path / "modules"
  for root, package, script, csv_name, printed in (
      (m3oe, "MDMTRec", sbs.M3OE_SCRIPT, "MDMTRec_domain_all_task_all_exp_4_0.01_0.001",
       'for (d, t), a in auc.items():\n  print(f"domain: {d}, task: {t}, auc: {a} | test '
       'logloss: 0.5")'),
      (mdmt, "HAMUR", sbs.MDMT_SCRIPT, "{args.model_name}_ml1m_domain_{args.domain}_task_"
       "{args.task}_exp_4", "")):
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("")
    (root / script).parent.mkdir(parents=True)
    (root / script).write_text(FAKE_SCRIPT.format(package=package, cells_printed=printed,
                                                  csv_name=csv_name).replace(
        'path = "output/', 'path = f"output/'))
  for name in ("torch", "pandas", "sklearn", "tqdm"):
    (modules / name).mkdir(parents=True)
    (modules / name / "__init__.py").write_text("__version__ = 'fake'\n")
  return m3oe, mdmt, modules


def test_authors_side_end_to_end(tmp_path, monkeypatch, capsys):
  m3oe, mdmt, modules = fake_checkouts(tmp_path)
  monkeypatch.setenv("PYTHONPATH", str(modules))
  data = write_data(tmp_path / "data")
  work = tmp_path / "work"
  monkeypatch.setenv("SBS_TORCH_PYTHON", sys.executable)  # a flag's value from the environment
  argv = [f"--data={data}", f"--workdir={work}", "--side=authors", "--seeds=2022,2023",
          "--rows=m3oe-mdmt,star-mdl,ple-mdmt", "--epochs=2", f"--authors_m3oe={m3oe}",
          f"--authors_mdmt={mdmt}"]
  assert sbs.main(argv) == 0
  ref = reference.load(work / "reference.json")
  assert list(ref.rows) == ["m3oe-mdmt", "star-mdl", "ple-mdmt"]
  star = ref.rows["star-mdl"].seeds[2023]
  assert star["age_25/click"]["auc"] == pytest.approx(0.711)  # from the click run
  assert star["age_25/like"]["auc"] == pytest.approx(0.711 + 0.05)  # from the like run
  assert ref.rows["m3oe-mdmt"].seeds[2022]["age_35_45_50_56/like"]["auc"] == pytest.approx(0.722)
  raw = json.loads((work / "reference.json").read_text())
  assert raw["source"]["commits"] == {"M3oE": None, "mdmt": None}  # not git checkouts
  runs = raw["rows"]["star-mdl"]["seeds"]["2022"]["runs"]
  assert [r["part"] for r in runs] == ["t0", "t1"] and runs[1]["epochs"] == 2
  assert "--task like" in runs[1]["command"] and "--device cpu" in runs[1]["command"]
  # Each run in its own folder, which holds what the script wrote relative to its cwd.
  assert (work / "authors" / "star-mdl" / "t1" / "seed2022" / "output" /
          "star_ml1m_domain_all_task_like_exp_4.csv").is_file()
  md = (work / "side_by_side.md").read_text()
  assert "| M3oE-MDMT | 2 / — |" in md and "| missing | missing |" in md
  # A second run reuses the finished runs.
  capsys.readouterr()
  assert sbs.main(argv) == 0
  assert capsys.readouterr().out.count("done before") == 2 * (1 + 2 + 1)
  # A later call for one more seed of one row: the table keeps what is already there.
  more = [a for a in argv if not a.startswith(("--seeds", "--rows"))]
  assert sbs.main(more + ["--seeds=2024", "--rows=m3oe-mdmt"]) == 0
  ref = reference.load(work / "reference.json")
  assert {label: sorted(row.seeds) for label, row in ref.rows.items()} == {
      "m3oe-mdmt": [2022, 2023, 2024], "star-mdl": [2022, 2023], "ple-mdmt": [2022, 2023]}
  assert "| M3oE-MDMT | 3 / — |" in (work / "side_by_side.md").read_text()
  # Runs of other epochs (here, every run but the one rerun) are not mixed in.
  epochs = [a for a in more if not a.startswith("--epochs")] + ["--epochs=3"]
  assert sbs.main(epochs + ["--seeds=2022", "--rows=m3oe-mdmt"]) == 0
  ref = reference.load(work / "reference.json")
  assert {label: sorted(row.seeds) for label, row in ref.rows.items()} == {"m3oe-mdmt": [2022]}
  # A folder that no authors' row makes is passed over.
  (work / "authors" / "m2m-mdmt" / "all" / "seed2022").mkdir(parents=True)
  assert sbs.main(more + ["--seeds=2022", "--rows=m3oe-mdmt"]) == 0
  assert "m2m-mdmt" not in reference.load(work / "reference.json").rows
  # A row of a seed with one of its runs unfinished is left out of that seed.
  (work / "authors" / "star-mdl" / "t1" / "seed2023" / "result.json").unlink()
  assert sbs.main(more + ["--seeds=2022", "--rows=m3oe-mdmt"]) == 0
  ref = reference.load(work / "reference.json")
  assert sorted(ref.rows["star-mdl"].seeds) == [2022]


def test_errors_are_one_line(tmp_path, monkeypatch, capsys):
  m3oe, mdmt, modules = fake_checkouts(tmp_path)
  data = write_data(tmp_path / "data")
  base = [f"--data={data}", f"--workdir={tmp_path / 'w'}", "--side=authors",
          f"--authors_m3oe={m3oe}", f"--authors_mdmt={mdmt}"]

  def error(*argv):
    capsys.readouterr()
    assert sbs.main([*base, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err

  monkeypatch.delenv("PYTHONPATH", raising=False)
  assert error(f"--torch_python={sys.executable}").startswith(
      f"reproduce/side_by_side.py: error: --torch_python={sys.executable}: cannot `import "
      "torch, pandas, sklearn, tqdm` (ModuleNotFoundError")
  assert error(f"--torch_python={tmp_path / 'nope'}").endswith("cannot run it (No such file or "
                                                               "directory)")
  monkeypatch.setenv("PYTHONPATH", str(modules))
  assert error(f"--torch_python={sys.executable}", f"--authors_m3oe={tmp_path}") == (
      f"reproduce/side_by_side.py: error: --authors_m3oe={tmp_path}: no "
      "examples/run_movielens.py in it (a checkout of the authors' repository)")
  assert error(f"--torch_python={sys.executable}", "--rows=m2m-mdmt").endswith(
      "--rows: no authors' code runs 'm2m-mdmt'; they run " + ", ".join(sbs.AUTHORS_ROWS))
  assert error(f"--data={tmp_path / 'none'}") == (
      f"reproduce/side_by_side.py: error: --data={tmp_path / 'none'}: no such folder (make it "
      "with reproduce/ml100k.py)")
  (data / "ml-1m.zip").write_bytes(b"")
  assert error(f"--torch_python={sys.executable}") == (
      f"reproduce/side_by_side.py: error: --data={data}: holds both ml-100k-as-1m.zip and "
      "ml-1m.zip; keep the one with the ratings of ml-1m.csv (make it with reproduce/ml100k.py)")
  (data / "ml-100k-as-1m.zip").unlink()
  assert "ml-1m.zip does not read as a zip archive" in error()
  write_data(data, "ml-1m.zip", csv_ratings=[RATINGS[0], RATINGS[2], RATINGS[1]])
  assert error() == (
      f"reproduce/side_by_side.py: error: --data={data}: row 2 of ml-1m.csv is "
      "851::1::3::874727000 but line 2 of ml-1m.zip's ratings.dat is 259::286::4::874724727; "
      "both sides split the rows in file order, so write both files from one source "
      "(reproduce/ml100k.py does)")
  write_data(data, "ml-1m.zip", csv_ratings=RATINGS[:2])
  assert "ml-1m.csv has 2 rows, ml-1m.zip's ratings.dat 3" in error()
  (data / "ml-1m.zip").unlink()
  assert "no ml-100k-as-1m.zip or ml-1m.zip in it" in error()
  (data / sbs.CSV_NAME).unlink()
  assert "no ml-1m.csv in it" in error()


def test_a_failed_authors_run_names_its_log(tmp_path, monkeypatch, capsys):
  m3oe, mdmt, modules = fake_checkouts(tmp_path)
  (m3oe / sbs.M3OE_SCRIPT).write_text("raise SystemExit('CUDA error: no device')\n")
  monkeypatch.setenv("PYTHONPATH", str(modules))
  data = write_data(tmp_path / "data")
  assert sbs.main([f"--data={data}", f"--workdir={tmp_path / 'w'}", "--side=authors",
                   "--rows=m3oe-mdmt", "--seeds=7", f"--torch_python={sys.executable}",
                   f"--authors_m3oe={m3oe}"]) == 2
  err = capsys.readouterr().err
  assert "examples/run_movielens.py (m3oe-mdmt all seed 7) failed with exit status 1" in err
  assert "CUDA error: no device" in err and str(tmp_path / "w" / "authors") in err


def test_flags_from_the_environment():
  args = sbs.parse_args([], {"SBS_DATA": "/d", "SBS_WORKDIR": "/w", "SBS_SEEDS": "1,2",
                             "SBS_ROWS": "star-mdl", "SBS_EPOCHS": "3", "SBS_SIDE": "ours"})
  assert (args.data, args.workdir, args.seeds, args.rows, args.epochs, args.side) == (
      "/d", "/w", (1, 2), ("star-mdl",), 3, "ours")
  args = sbs.parse_args(["--torch_python=venv/bin/python"], {"SBS_DATA": "/d", "SBS_WORKDIR": "/w"})
  assert args.torch_python == os.path.join(os.getcwd(), "venv", "bin", "python")  # not resolved
  assert sbs.parse_args(["--torch_python=python3"], {"SBS_DATA": "/d", "SBS_WORKDIR": "/w"}
                        ).torch_python == "python3"  # found on PATH
  args = sbs.parse_args(["--seeds=5", "--data=/e"], {"SBS_DATA": "/d", "SBS_WORKDIR": "/w"})
  assert args.seeds == (5,) and args.data == "/e" and args.epochs == sbs.PAPER_EPOCHS
  assert args.rows == sbs.DEFAULT_ROWS and args.seeds != sbs.DEFAULT_SEEDS


def test_our_sweep_command_reads_the_zip_with_the_file_order_split(tmp_path):
  """The sweep accepts the command's overrides: its dry run prints each run's trainer command."""
  data = {"zip": "/data/ml-100k-as-1m.zip", "zip_sha256": "ab" * 32}
  args = sbs.parse_args([f"--data={tmp_path}", f"--workdir={tmp_path / 'w'}", "--seeds=2022,2023",
                         "--rows=m3oe-mdmt,star-mdl", "--epochs=3"], {})
  command = sbs.sweep_command(args, data)
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run([*command, "--dry_run"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 2 * (1 + 2)
  for line in lines:
    assert "--config=configs/movielens.py:reference_split,model=" in line
    for flag in ("--config.data.archive=/data/ml-100k-as-1m.zip",
                 f"--config.data.archive_checksum=sha256:{'ab' * 32}",
                 "--config.data.download=False", "--config.data.vocabulary=all_rows",
                 "--config.num_epochs=3"):
      assert flag in line
  assert "star-mdl/t1/seed2023" in proc.stdout
  sweep = json.loads((tmp_path / "w" / "ours" / "sweep.json").read_text())
  assert [r["label"] for r in sweep["runs"]] == ["m3oe-mdmt"] * 2 + ["star-mdl"] * 4


def test_script_runs_outside_the_package(tmp_path):
  """As a script from any folder (it puts its checkout on sys.path): --help, and a one-line
  error for a missing --data."""
  script = REPO / "reproduce" / "side_by_side.py"
  env = {k: v for k, v in os.environ.items() if not k.startswith("SBS_")}
  proc = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "--authors_mdmt" in proc.stdout
  proc = subprocess.run([sys.executable, str(script), "--data=nowhere", "--workdir=w",
                         "--side=ours"], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip() == textwrap.dedent("""\
      reproduce/side_by_side.py: error: --data=nowhere: no such folder (make it with \
reproduce/ml100k.py)""")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_checkout_info_compares_the_files_with_the_commit(tmp_path):
  root = tmp_path / "M3oE"
  (root / "examples").mkdir(parents=True)
  (root / sbs.M3OE_SCRIPT).write_text("print('hi')\n")
  (root / "picture.jpg").write_bytes(b"jpg")
  git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
  for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "c"]):
    subprocess.run(git + command, check=True, capture_output=True)
  commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
  info = sbs.checkout_info(str(root), "--authors_m3oe", sbs.M3OE_SCRIPT)
  assert (info["commit"], info["modified"], info["missing_files"]) == (commit, False, [])
  (root / "picture.jpg").unlink()  # a partial copy is not a changed one
  subprocess.run(git + ["rm", "-q", "--cached", str(root / sbs.M3OE_SCRIPT)], check=True)
  info = sbs.checkout_info(str(root), "--authors_m3oe", sbs.M3OE_SCRIPT)
  assert (info["modified"], info["missing_files"]) == (False, ["picture.jpg"])
  (root / sbs.M3OE_SCRIPT).write_text("print('changed')\n")
  info = sbs.checkout_info(str(root), "--authors_m3oe", sbs.M3OE_SCRIPT)
  assert info["modified"] and info["changed_files"] == [sbs.M3OE_SCRIPT]
  plain = tmp_path / "plain"
  (plain / "examples").mkdir(parents=True)
  (plain / sbs.M3OE_SCRIPT).write_text("")
  assert sbs.checkout_info(str(plain), "--authors_m3oe", sbs.M3OE_SCRIPT)["commit"] is None
