#!/usr/bin/env bash
# Speed on one accelerator, in one run: the figures the README's accelerator table
# holds (pure step and end-to-end epoch, float32 and bfloat16, batch 4096 with and
# without several steps per call, 65536 and 262144), and the embedding gradient with
# heavily repeated ids. About 10 minutes on one H200.
#
#   OUT=/tmp/check bash benchmarks/accelerator_check.sh
#
# Everything lands in $OUT (text and JSON). The sizes can be overridden to try the
# script on a CPU first, e.g.
#   ROWS=40000 SMALL=512 LARGE=2048 MODEL_SIZE=tiny bash benchmarks/accelerator_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/accelerator_check}
ROWS=${ROWS:-10000000}            # end-to-end dataset rows (8:1:1)
SMALL=${SMALL:-4096}              # the dispatch-bound batch size, run with K steps per call
K=${K:-1,8}
LARGE=${LARGE:-65536,262144}
EXAMPLES=${EXAMPLES:-4000000}     # examples per timed run of the pure step
MODEL_SIZE=${MODEL_SIZE:-paper}
mkdir -p "$OUT"
quiet() { grep -v "^[WI][0-9]"; }

{
  date -u +"%Y-%m-%d %H:%M UTC"
  python3 -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__)
print(jax.devices())"
  command -v nvidia-smi > /dev/null && nvidia-smi -L
} 2>&1 | tee "$OUT/device.txt"

echo "== golden tests on this device (float32, highest matmul precision)"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/models/test_m3oe_golden.py \
  tests/models/test_baselines_golden.py 2>&1 | tail -3 | tee "$OUT/golden.txt"

if [ "$MODEL_SIZE" = paper ]; then
  echo "== pure step, M3oE at the paper's size"
  timeout 600 python3 benchmarks/bench_train.py --batch_sizes="$SMALL,$LARGE" \
    --eval_batch_sizes="$SMALL,$LARGE" --dtypes=float32,bfloat16 --repeats=5 \
    --examples_per_run="$EXAMPLES" --json="$OUT/step.json" 2>&1 | quiet | tee "$OUT/step.txt"
fi

echo "== embedding gradient: uniform against heavily repeated ids (the jaxlib scatter-add regression)"
timeout 300 python3 benchmarks/bench_embedding_grad.py --json="$OUT/embedding_grad.json" 2>&1 \
  | quiet | tee "$OUT/embedding_grad.txt"

echo "== end to end: whole epochs of train_and_evaluate against the same k-step call"
timeout 900 python3 benchmarks/bench_end_to_end.py --rows="$ROWS" --model_size="$MODEL_SIZE" \
  --batch_sizes="$SMALL" --steps_per_call="$K" --dtypes=float32,bfloat16 \
  --json="$OUT/end_to_end_small.json" 2>&1 | quiet | tee "$OUT/end_to_end_small.txt"
timeout 900 python3 benchmarks/bench_end_to_end.py --rows="$ROWS" --model_size="$MODEL_SIZE" \
  --batch_sizes="$LARGE" --steps_per_call=1 --dtypes=float32,bfloat16 \
  --json="$OUT/end_to_end_large.json" 2>&1 | quiet | tee "$OUT/end_to_end_large.txt"
