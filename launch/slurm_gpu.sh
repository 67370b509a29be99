#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Submits launch/slurm_gpu.sbatch: multi-node GPU training under Slurm, one
# task per node. Run with --help for usage.
set -euo pipefail

PROG="slurm_gpu.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: launch/slurm_gpu.sh --config=CONFIG --workdir=DIR [options] [-- TRAINER_ARGS...]

Submits launch/slurm_gpu.sbatch with sbatch: NODES nodes, one task per node
(--ntasks-per-node=1), each task driving all GPUS_PER_NODE GPUs of its node;
inside the job srun starts `python3 -m m3oe_jax.train ... --distributed` on
every node and jax.distributed reads the layout from the Slurm environment.
The job runs in this repository (sbatch --chdir), with this shell's
environment (activate the virtualenv with m3oe_jax installed first).

Options (each can also be set by the environment variable shown):
  --config=CONFIG        CONFIG         configs/NAME.py[:VARIANT] (required)
  --workdir=DIR          WORKDIR        on a filesystem every node sees; a rerun
                                        resumes from it (required)
  --nodes=N              NODES          number of nodes (default 2)
  --gpus-per-node=N      GPUS_PER_NODE  GPUs per node (default 8)
  --cpus-per-task=N      CPUS_PER_TASK  CPUs for each node's process (default 16)
  --partition=NAME       PARTITION      Slurm partition
  --account=NAME         ACCOUNT        Slurm account
  --time=LIMIT           TIME_LIMIT     time limit, e.g. 24:00:00
  --job-name=NAME        JOB_NAME       job name (default m3oe)
  --output=PATTERN       OUTPUT         job log (default slurm-%x-%j.out)
  --sbatch-arg=ARG                      any other sbatch option (repeatable),
                                        e.g. --sbatch-arg=--exclusive
  --python=PYTHON        PYTHON         Python on the nodes (default python3)
  --dry-run              DRY_RUN=1      print the sbatch command and, as
                                        comments, what the job runs; run nothing
  -h, --help                            show this help
Arguments after `--`, and any --config.FIELD=VALUE, are passed to the trainer.

Example:
  launch/slurm_gpu.sh --nodes=4 --gpus-per-node=8 --partition=gpu \
      --config=configs/synthetic.py --workdir=/shared/$USER/m3oe/run1 -- --config.seed=1
EOF_USAGE
}

CONFIG="${CONFIG:-}"
WORKDIR="${WORKDIR:-}"
NODES="${NODES:-2}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
CPUS_PER_TASK="${CPUS_PER_TASK:-16}"
PARTITION="${PARTITION:-}"
ACCOUNT="${ACCOUNT:-}"
TIME_LIMIT="${TIME_LIMIT:-}"
JOB_NAME="${JOB_NAME:-m3oe}"
OUTPUT="${OUTPUT:-slurm-%x-%j.out}"
PYTHON="${PYTHON:-python3}"
SBATCH_EXTRA=()
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
    --nodes) opt_value "$@"; shift "$NSHIFT"; NODES="$OPTVAL" ;;
    --gpus-per-node) opt_value "$@"; shift "$NSHIFT"; GPUS_PER_NODE="$OPTVAL" ;;
    --cpus-per-task) opt_value "$@"; shift "$NSHIFT"; CPUS_PER_TASK="$OPTVAL" ;;
    --partition) opt_value "$@"; shift "$NSHIFT"; PARTITION="$OPTVAL" ;;
    --account) opt_value "$@"; shift "$NSHIFT"; ACCOUNT="$OPTVAL" ;;
    --time) opt_value "$@"; shift "$NSHIFT"; TIME_LIMIT="$OPTVAL" ;;
    --job-name) opt_value "$@"; shift "$NSHIFT"; JOB_NAME="$OPTVAL" ;;
    --output) opt_value "$@"; shift "$NSHIFT"; OUTPUT="$OPTVAL" ;;
    --python) opt_value "$@"; shift "$NSHIFT"; PYTHON="$OPTVAL" ;;
    --sbatch-arg)
      # The value itself starts with "--", so only the --sbatch-arg=ARG form.
      ((OPT_INLINE)) && [[ -n "$OPTVAL" ]] || usage_error "use --sbatch-arg=ARG (with '=')"
      [[ "$OPTVAL" != --ntasks-per-node* ]] ||
        usage_error "--sbatch-arg: the launcher needs --ntasks-per-node=1; do not override it"
      SBATCH_EXTRA+=("$OPTVAL") ;;
    --config.*) TRAIN_ARGS+=("$ARG") ;;
    --) TRAIN_ARGS+=("$@"); break ;;
    *) usage_error "unknown argument '$ARG'" ;;
  esac
done

is_dry_run || true # rejects a malformed DRY_RUN early
require "$CONFIG" --config CONFIG "trainer config"
require "$WORKDIR" --workdir WORKDIR "workdir"
for pair in "--nodes:NODES:$NODES" "--gpus-per-node:GPUS_PER_NODE:$GPUS_PER_NODE" \
  "--cpus-per-task:CPUS_PER_TASK:$CPUS_PER_TASK"; do
  IFS=: read -r flag var value <<<"$pair"
  [[ "$value" =~ ^[1-9][0-9]*$ ]] ||
    usage_error "$flag/$var must be a positive integer, got '$value'"
done
if [[ "$WORKDIR" != /* ]]; then
  note "warning: workdir '$WORKDIR' is relative; it is taken under $REPO_ROOT, which every node must see"
fi

sbatch_args=(
  "--nodes=$NODES"
  --ntasks-per-node=1
  "--gpus-per-node=$GPUS_PER_NODE"
  "--cpus-per-task=$CPUS_PER_TASK"
  "--job-name=$JOB_NAME"
  "--output=$OUTPUT"
  "--chdir=$REPO_ROOT"
)
[[ -z "$PARTITION" ]] || sbatch_args+=("--partition=$PARTITION")
[[ -z "$ACCOUNT" ]] || sbatch_args+=("--account=$ACCOUNT")
[[ -z "$TIME_LIMIT" ]] || sbatch_args+=("--time=$TIME_LIMIT")
sbatch_args+=(${SBATCH_EXTRA[@]+"${SBATCH_EXTRA[@]}"})

job_args=(
  "--config=$CONFIG"
  "--workdir=$WORKDIR"
  "--gpus-per-node=$GPUS_PER_NODE"
  "--python=$PYTHON"
)
if ((${#TRAIN_ARGS[@]})); then
  job_args+=(-- "${TRAIN_ARGS[@]}")
fi

run_cmd sbatch "${sbatch_args[@]}" "$LAUNCH_DIR/slurm_gpu.sbatch" "${job_args[@]}"
if is_dry_run; then
  echo "# In the job, launch/slurm_gpu.sbatch then runs (SLURM_CPUS_PER_TASK=$CPUS_PER_TASK):"
  (cd "$REPO_ROOT" && env SLURM_CPUS_PER_TASK="$CPUS_PER_TASK" DRY_RUN=1 \
    bash "$LAUNCH_DIR/slurm_gpu.sbatch" "${job_args[@]}") | sed 's/^/#   /'
fi
