#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# One host, several GPUs: a single m3oe_jax.train process drives every local
# GPU (JAX single-process multi-device). Run with --help for usage.
set -euo pipefail

PROG="single_host_gpu.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: launch/single_host_gpu.sh --config=CONFIG --workdir=DIR [options] [-- TRAINER_ARGS...]

Runs one training process in the foreground that uses all local GPUs (or those
given with --gpus):
  env [CUDA_VISIBLE_DEVICES=...] XLA_PYTHON_CLIENT_MEM_FRACTION=... \
      python3 -m m3oe_jax.train --config=... --workdir=...
Run it from the repository root (config paths are relative to it) with the
virtualenv holding m3oe_jax and jax[cuda12] active. Rerunning with the same
workdir resumes.

Options (each can also be set by the environment variable shown):
  --config=CONFIG        CONFIG          configs/NAME.py[:VARIANT] (required)
  --workdir=DIR          WORKDIR         checkpoints and logs (required)
  --gpus=LIST            GPUS            GPUs to use, e.g. 0,1,2,3 (sets
                                         CUDA_VISIBLE_DEVICES; default: all)
  --mem-fraction=F       MEM_FRACTION    XLA_PYTHON_CLIENT_MEM_FRACTION, the share
                                         of each GPU's memory JAX preallocates
                                         (default 0.90, or the variable's value)
  --no-preallocate       PREALLOCATE=0   XLA_PYTHON_CLIENT_PREALLOCATE=false:
                                         allocate on demand (slower; for shared GPUs)
  --env=KEY=VALUE                        another environment variable for the
                                         trainer, e.g. XLA_FLAGS=... (repeatable)
  --python=PYTHON        PYTHON          Python to run (default python3)
  --dry-run              DRY_RUN=1       print the command, run nothing
  -h, --help                             show this help
Arguments after `--`, and any --config.FIELD=VALUE, are passed to the trainer.

Example:
  launch/single_host_gpu.sh --gpus=0,1,2,3 --config=configs/synthetic.py \
      --workdir=workdir/run1 -- --config.seed=1
EOF_USAGE
}

CONFIG="${CONFIG:-}"
WORKDIR="${WORKDIR:-}"
GPUS="${GPUS:-}"
MEM_FRACTION="${MEM_FRACTION:-${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}}"
PREALLOCATE="${PREALLOCATE:-1}"
PYTHON="${PYTHON:-python3}"
EXTRA_ENV=()
TRAIN_ARGS=()

while (($#)); do
  ARG="$1"
  split_opt "$ARG"
  shift
  case "$OPT" in
    -h | --help) usage; exit 0 ;;
    --dry-run) opt_flag; DRY_RUN=1 ;;
    --config) opt_value "$@"; shift "$NSHIFT"; CONFIG="$OPTVAL" ;;
    --workdir) opt_value "$@"; shift "$NSHIFT"; WORKDIR="$OPTVAL" ;;
    --gpus) opt_value "$@"; shift "$NSHIFT"; GPUS="$OPTVAL" ;;
    --mem-fraction) opt_value "$@"; shift "$NSHIFT"; MEM_FRACTION="$OPTVAL" ;;
    --no-preallocate) opt_flag; PREALLOCATE=0 ;;
    --python) opt_value "$@"; shift "$NSHIFT"; PYTHON="$OPTVAL" ;;
    --env)
      opt_value "$@"; shift "$NSHIFT"
      [[ "$OPTVAL" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] ||
        usage_error "--env wants KEY=VALUE, got '$OPTVAL'"
      EXTRA_ENV+=("$OPTVAL") ;;
    --config.*) TRAIN_ARGS+=("$ARG") ;;
    --) TRAIN_ARGS+=("$@"); break ;;
    *) usage_error "unknown argument '$ARG'" ;;
  esac
done

is_dry_run || true # rejects a malformed DRY_RUN early
require "$CONFIG" --config CONFIG "trainer config"
require "$WORKDIR" --workdir WORKDIR "workdir"
[[ -z "$GPUS" || "$GPUS" =~ ^[0-9]+(,[0-9]+)*$ ]] ||
  usage_error "--gpus/GPUS must be a comma-separated list of GPU numbers, got '$GPUS'"
[[ "$MEM_FRACTION" =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] ||
  usage_error "--mem-fraction/MEM_FRACTION must be a number in (0, 1], got '$MEM_FRACTION'"

run_env=()
[[ -z "$GPUS" ]] || run_env+=("CUDA_VISIBLE_DEVICES=$GPUS")
run_env+=("XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION")
case "$PREALLOCATE" in
  1 | true | yes) ;;
  0 | false | no) run_env+=(XLA_PYTHON_CLIENT_PREALLOCATE=false) ;;
  *) usage_error "PREALLOCATE must be 1 or 0, got '$PREALLOCATE'" ;;
esac
run_env+=(${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"})

run_cmd env "${run_env[@]}" "$PYTHON" -m m3oe_jax.train "--config=$CONFIG" "--workdir=$WORKDIR" \
  ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}
