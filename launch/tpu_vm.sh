#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Cloud TPU VM launcher: single host (v5litepod-8, v4-8, ...) or pod slice
# (v5litepod-64, v4-32, ...). Run with --help for usage.
set -euo pipefail

PROG="tpu_vm.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND [options] [-- TRAINER_ARGS...]

Drives a Cloud TPU VM with gcloud: a single host (v5litepod-8, v4-8) or a pod
slice (v5litepod-64, v4-32). install, run and stop act on every worker
(--worker=all), so each host of a slice runs the same command.

Commands:
  create     create the TPU VM (gcloud compute tpus tpu-vm create)
  install    put the code on every worker (git clone --repo-url, or copy this
             checkout with scp) and pip-install it into a virtualenv there
  run        start training on every worker in the background (nohup); each
             worker writes its own log file
  logs       follow the training log of one worker (tail -F)
  stop       stop the training process on every worker
  ssh        open a shell on one worker
  describe   show the TPU VM
  delete     delete the TPU VM

Options (each can also be set by the environment variable shown):
  --name=NAME              TPU_NAME      TPU VM name (required)
  --zone=ZONE              TPU_ZONE      zone, e.g. us-central2-b (required)
  --project=PROJECT        TPU_PROJECT   GCP project (default: gcloud's own)
  --accelerator-type=TYPE  TPU_TYPE      create: v5litepod-8, v4-32, ...
  --version=RUNTIME        TPU_VERSION   create: TPU software version (default
                                         from the type: v4 tpu-ubuntu2204-base,
                                         v5litepod v2-alpha-tpuv5-lite,
                                         v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --spot                   TPU_SPOT=1    create: a Spot TPU VM
  --repo-url=URL           REPO_URL      install: git clone URL on the workers;
                                         unset: copy this checkout with scp
  --branch=BRANCH          REPO_BRANCH   install: branch or tag (default main)
  --remote-dir=DIR         REMOTE_DIR    code on the workers (default m3oe_jax)
  --venv=DIR               VENV_DIR      virtualenv on the workers (default
                                         m3oe_venv); relative paths are under
                                         the worker's $HOME
  --python=PYTHON          TPU_PYTHON    install: Python on the workers to make
                                         the venv with; unset: uv makes it with
                                         Python $PYTHON_VERSION (default 3.11;
                                         jax needs >= 3.11, TPU images have 3.10)
                           JAX_VERSION   install: jax[tpu] version (default: the
                                         jax pin in requirements.txt)
  --config=CONFIG          CONFIG        run: configs/NAME.py[:VARIANT] (required)
  --workdir=DIR            WORKDIR       run: gs://BUCKET/PATH, shared by all
                                         workers; a rerun resumes (required)
  --env=KEY=VALUE                        run: environment variable for the
                                         trainer (repeatable)
  --no-distributed         TPU_DISTRIBUTED=0  run: do not pass --distributed
  --log-file=PATH          LOG_FILE      log on each worker (default
                                         m3oe_logs/train.log)
  --worker=N|all           WORKER        logs, ssh: which worker (default 0)
  --yes                                  delete: do not ask for confirmation
  --dry-run                DRY_RUN=1     print every command, run nothing
  -h, --help                             show this help

Arguments after `--`, and any --config.FIELD=VALUE, are passed to the trainer.

Examples:
  launch/tpu_vm.sh create --name=m3oe --zone=us-central2-b --accelerator-type=v4-32
  launch/tpu_vm.sh install --name=m3oe --zone=us-central2-b
  launch/tpu_vm.sh run --name=m3oe --zone=us-central2-b \
      --config=configs/synthetic.py --workdir=gs://BUCKET/m3oe/run1 -- --config.seed=1
  launch/tpu_vm.sh logs --name=m3oe --zone=us-central2-b
  launch/tpu_vm.sh delete --name=m3oe --zone=us-central2-b
EOF
}

TPU_NAME="${TPU_NAME:-}"
TPU_ZONE="${TPU_ZONE:-}"
TPU_PROJECT="${TPU_PROJECT:-}"
TPU_TYPE="${TPU_TYPE:-}"
TPU_VERSION="${TPU_VERSION:-}"
TPU_SPOT="${TPU_SPOT:-0}"
REPO_URL="${REPO_URL:-}"
REPO_BRANCH="${REPO_BRANCH:-main}"
REMOTE_DIR="${REMOTE_DIR:-m3oe_jax}"
VENV_DIR="${VENV_DIR:-m3oe_venv}"
TPU_PYTHON="${TPU_PYTHON:-}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
JAX_VERSION="${JAX_VERSION:-}"
CONFIG="${CONFIG:-}"
WORKDIR="${WORKDIR:-}"
TPU_DISTRIBUTED="${TPU_DISTRIBUTED:-1}"
LOG_FILE="${LOG_FILE:-m3oe_logs/train.log}"
WORKER="${WORKER:-0}"
ASSUME_YES=0
TRAIN_ENV=()
TRAIN_ARGS=()

COMMAND=""
while (($#)); do
  ARG="$1"
  split_opt "$ARG"
  shift
  case "$OPT" in
    -h | --help) usage; exit 0 ;;
    --dry-run) opt_flag; DRY_RUN=1 ;;
    --name) opt_value "$@"; shift "$NSHIFT"; TPU_NAME="$OPTVAL" ;;
    --zone) opt_value "$@"; shift "$NSHIFT"; TPU_ZONE="$OPTVAL" ;;
    --project) opt_value "$@"; shift "$NSHIFT"; TPU_PROJECT="$OPTVAL" ;;
    --accelerator-type) opt_value "$@"; shift "$NSHIFT"; TPU_TYPE="$OPTVAL" ;;
    --version) opt_value "$@"; shift "$NSHIFT"; TPU_VERSION="$OPTVAL" ;;
    --spot) opt_flag; TPU_SPOT=1 ;;
    --repo-url) opt_value "$@"; shift "$NSHIFT"; REPO_URL="$OPTVAL" ;;
    --branch) opt_value "$@"; shift "$NSHIFT"; REPO_BRANCH="$OPTVAL" ;;
    --remote-dir) opt_value "$@"; shift "$NSHIFT"; REMOTE_DIR="$OPTVAL" ;;
    --venv) opt_value "$@"; shift "$NSHIFT"; VENV_DIR="$OPTVAL" ;;
    --python) opt_value "$@"; shift "$NSHIFT"; TPU_PYTHON="$OPTVAL" ;;
    --config) opt_value "$@"; shift "$NSHIFT"; CONFIG="$OPTVAL" ;;
    --workdir) opt_value "$@"; shift "$NSHIFT"; WORKDIR="$OPTVAL" ;;
    --env)
      opt_value "$@"; shift "$NSHIFT"
      [[ "$OPTVAL" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] ||
        usage_error "--env wants KEY=VALUE, got '$OPTVAL'"
      TRAIN_ENV+=("$OPTVAL") ;;
    --no-distributed) opt_flag; TPU_DISTRIBUTED=0 ;;
    --log-file) opt_value "$@"; shift "$NSHIFT"; LOG_FILE="$OPTVAL" ;;
    --worker) opt_value "$@"; shift "$NSHIFT"; WORKER="$OPTVAL" ;;
    --yes) opt_flag; ASSUME_YES=1 ;;
    --config.*) TRAIN_ARGS+=("$ARG") ;;
    --) TRAIN_ARGS+=("$@"); break ;;
    -*) usage_error "unknown option '$OPT'" ;;
    *)
      [[ -z "$COMMAND" ]] || usage_error "unexpected argument '$OPT' (command is already '$COMMAND')"
      COMMAND="$OPT" ;;
  esac
done

[[ -n "$COMMAND" ]] ||
  usage_error "missing COMMAND (create, install, run, logs, stop, ssh, describe, delete)"
case "$COMMAND" in
  create | install | run | logs | stop | ssh | describe | delete) ;;
  *) usage_error "unknown command '$COMMAND'" ;;
esac
is_dry_run || true # rejects a malformed DRY_RUN early
if ((${#TRAIN_ARGS[@]})) && [[ "$COMMAND" != run ]]; then
  usage_error "trainer arguments (${TRAIN_ARGS[*]}) are only for 'run'"
fi
if ((${#TRAIN_ENV[@]})) && [[ "$COMMAND" != run ]]; then
  usage_error "--env is only for 'run'"
fi
require "$TPU_NAME" --name TPU_NAME "TPU name"
require "$TPU_ZONE" --zone TPU_ZONE "zone"
[[ "$WORKER" =~ ^([0-9]+|all)$ ]] ||
  usage_error "--worker/WORKER must be a worker number or 'all', got '$WORKER'"

TPU_CMD=(gcloud compute tpus tpu-vm)
LOCATION=("--zone=$TPU_ZONE")
[[ -z "$TPU_PROJECT" ]] || LOCATION+=("--project=$TPU_PROJECT")

# remote_path PATH: PATH as shell text for a worker; relative paths are taken
# under the worker's $HOME (left for the worker's shell to expand).
remote_path() {
  if [[ "$1" == /* ]]; then
    shquote "$1"
  else
    # shellcheck disable=SC2016 # $HOME is for the worker's shell to expand
    printf '"$HOME"/%s' "$(shquote "$1")"
  fi
}

# on_workers WORKER SCRIPT: run the shell text SCRIPT on the given worker(s).
on_workers() {
  run_cmd "${TPU_CMD[@]}" ssh "$TPU_NAME" "${LOCATION[@]}" "--worker=$1" "--command=$2"
}

# The pid file sits next to the log file.
PID_FILE="${LOG_FILE%.log}.pid"
R_LOG="$(remote_path "$LOG_FILE")"
R_PID="$(remote_path "$PID_FILE")"
R_DIR="$(remote_path "$REMOTE_DIR")"
R_VENV="$(remote_path "$VENV_DIR")"
RUNNING_TEST="[ -f $R_PID ] && kill -0 \"\$(cat $R_PID)\" 2>/dev/null"

cmd_create() {
  require "$TPU_TYPE" --accelerator-type TPU_TYPE "accelerator type"
  local version="$TPU_VERSION"
  if [[ -z "$version" ]]; then
    case "$TPU_TYPE" in
      v4-*) version=tpu-ubuntu2204-base ;;
      v5litepod-*) version=v2-alpha-tpuv5-lite ;;
      v5p-*) version=v2-alpha-tpuv5 ;;
      v6e-*) version=v2-alpha-tpuv6e ;;
      *) usage_error "no default TPU software version for '$TPU_TYPE': give --version or set TPU_VERSION" ;;
    esac
  fi
  local args=(create "$TPU_NAME" "${LOCATION[@]}" "--accelerator-type=$TPU_TYPE" "--version=$version")
  case "$TPU_SPOT" in
    1 | true | yes) args+=(--spot) ;;
    0 | false | no | "") ;;
    *) usage_error "TPU_SPOT must be 1 or 0, got '$TPU_SPOT'" ;;
  esac
  run_cmd "${TPU_CMD[@]}" "${args[@]}"
}

cmd_install() {
  local jax_version="${JAX_VERSION:-$(pinned_jax_version)}"
  [[ -n "$jax_version" ]] || die "no jax==VERSION pin in $REPO_ROOT/requirements.txt; set JAX_VERSION"
  local fetch
  if [[ -n "$REPO_URL" ]]; then
    fetch="if [ -d $R_DIR/.git ]; then git -C $R_DIR fetch --depth=1 origin $(shquote "$REPO_BRANCH")"
    fetch+=" && git -C $R_DIR checkout --force FETCH_HEAD;"
    fetch+=" else git clone --depth=1 --branch $(shquote "$REPO_BRANCH") $(shquote "$REPO_URL") $R_DIR; fi"
  else
    # Copy this checkout (uncommitted changes included) to every worker.
    local archive="${TMPDIR:-/tmp}/m3oe_jax_src_${TPU_NAME}.tgz"
    local remote_archive=/tmp/m3oe_jax_src.tgz
    run_cmd tar -czf "$archive" --exclude=.git --exclude=__pycache__ --exclude='*.egg-info' \
      --exclude=.pytest_cache --exclude=.venv --exclude=./build --exclude='./workdir*' \
      -C "$REPO_ROOT" .
    run_cmd "${TPU_CMD[@]}" scp "$archive" "$TPU_NAME:$remote_archive" "${LOCATION[@]}" --worker=all
    fetch="mkdir -p $R_DIR && tar -xzf $remote_archive -C $R_DIR"
  fi
  local py="$R_VENV/bin/python" make_venv
  if [[ -n "$TPU_PYTHON" ]]; then
    make_venv="$(shquote "$TPU_PYTHON") -m venv $R_VENV"
  else
    # TPU VM images ship Python 3.10; jax needs >= 3.11, so uv makes the venv
    # (downloading that Python if the image lacks it).
    make_venv="python3 -m pip install --user --upgrade uv"
    make_venv+=" && \"\$HOME\"/.local/bin/uv venv --seed --python $(shquote "$PYTHON_VERSION") $R_VENV"
  fi
  local script="$fetch"
  script+=" && if [ ! -x $py ]; then $make_venv; fi"
  script+=" && cd $R_DIR"
  script+=" && $py -m pip install --upgrade pip"
  script+=" && $py -m pip install -r requirements.txt"
  script+=" && $py -m pip install -e ."
  script+=" && $py -m pip install $(shquote "jax[tpu]==$jax_version")"
  on_workers all "$script"
}

cmd_run() {
  require "$CONFIG" --config CONFIG "trainer config"
  require "$WORKDIR" --workdir WORKDIR "workdir"
  if [[ "$WORKDIR" != gs://* ]]; then
    note "warning: workdir '$WORKDIR' is not a gs:// path; every worker must see the same workdir"
  fi
  local train=(-m m3oe_jax.train "--config=$CONFIG" "--workdir=$WORKDIR")
  case "$TPU_DISTRIBUTED" in
    1 | true | yes) train+=(--distributed) ;;
    0 | false | no) ;;
    *) usage_error "TPU_DISTRIBUTED must be 1 or 0, got '$TPU_DISTRIBUTED'" ;;
  esac
  train+=(${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})
  local launch
  launch="$R_VENV/bin/python $(shjoin "${train[@]}")"
  if ((${#TRAIN_ENV[@]})); then
    launch="env $(shjoin "${TRAIN_ENV[@]}") $launch"
  fi
  local script
  script="mkdir -p $(remote_path "$(dirname "$LOG_FILE")") || exit 1; cd $R_DIR || exit 1;"
  script+=" if $RUNNING_TEST; then"
  script+=" echo \"\$(hostname): m3oe_jax.train is already running; use stop first\" >&2; exit 1; fi;"
  script+=" nohup $launch >> $R_LOG 2>&1 < /dev/null & echo \$! > $R_PID;"
  script+=" echo \"\$(hostname): started m3oe_jax.train, pid \$(cat $R_PID)\""
  on_workers all "$script"
}

cmd_logs() {
  on_workers "$WORKER" "tail -n 100 -F $R_LOG"
}

cmd_stop() {
  local script="if $RUNNING_TEST; then kill \"\$(cat $R_PID)\";"
  script+=" i=0; while kill -0 \"\$(cat $R_PID)\" 2>/dev/null && [ \$i -lt 60 ]; do sleep 1; i=\$((i+1)); done;"
  script+=" echo \"\$(hostname): stopped\"; else echo \"\$(hostname): not running\"; fi"
  on_workers all "$script"
}

cmd_ssh() {
  run_cmd "${TPU_CMD[@]}" ssh "$TPU_NAME" "${LOCATION[@]}" "--worker=$WORKER"
}

cmd_describe() {
  run_cmd "${TPU_CMD[@]}" describe "$TPU_NAME" "${LOCATION[@]}"
}

cmd_delete() {
  local args=(delete "$TPU_NAME" "${LOCATION[@]}")
  ((ASSUME_YES == 0)) || args+=(--quiet)
  run_cmd "${TPU_CMD[@]}" "${args[@]}"
}

"cmd_$COMMAND"
