#!/usr/bin/env bash
# One prepared GPU check for a session with a lent H100/H200: the flash-ALiBi kernel tests compiled (not
# interpreted), attention at the target point, the train step against the naive reference in the same process,
# decode throughput, the 1.3B step and a flash tile sweep, in that order of importance. The whole script keeps
# under DEADLINE_S seconds (default 540, under the device tool's 600 s per call): each step's timeout is cut to the
# time left and steps that cannot start with 30 s left are skipped, so a slow step never loses the later logs.
# Every log and JSON lands in $OUT (default /tmp/gpu_out).
#
# The GPU host needs jax with CUDA, flax, optax, orbax (usually there) plus gin-config, clu and ml-collections
# (pure-Python wheels; tensorflow/seqio are NOT needed: the model, train step and decoding import without them).
# Before the call, on a machine with pip:
#   mkdir -p .whl .bench && cp ../shared/bench/naive_flax_gpt.py .bench/
#   pip download --no-deps --only-binary=:all: -d .whl gin-config==0.5.0 clu==0.0.12 ml-collections
# and carry `.whl` and `.bench` (both git-ignored) with the working tree.
#
# SMOKE=1 bash benchmarks/gpu_session.sh runs every step at toy sizes on the CPU: a dry run of this script.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
DEADLINE_S=${DEADLINE_S:-540}
SMOKE=${SMOKE:-}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
NAIVE=${NAIVE:-.bench/naive_flax_gpt.py}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; date -u;
  python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; } \
  2>&1 | tee "$OUT/device.txt"

if [ -n "$SMOKE" ]; then
  KERNEL_ENV=(env JAX_PLATFORMS=cpu); KERNEL_TESTS=(-k "segment or causal_block or lowers")
  ATTN=(--smoke); TRAIN=(--smoke); DECODE=(--smoke); BIG=gpt2_small; SWEEP=(--smoke)
else
  KERNEL_ENV=(env JAX_PLATFORMS=cuda); KERNEL_TESTS=()
  ATTN=(--seq-lens 2048 8192 --head-dims 64 128); TRAIN=(); DECODE=(); BIG=gpt_1_3b
  SWEEP=(--seq-lens 8192 --head-dims 64)
fi

START=$SECONDS
run() {  # name timeout_s command...
  local name=$1 t=$2; shift 2
  local left=$((DEADLINE_S - (SECONDS - START)))
  if [ "$left" -lt 30 ]; then echo "== $name SKIPPED (${left}s left of ${DEADLINE_S}s)"; return; fi
  [ "$t" -gt "$left" ] && t=$left
  echo "== $name (timeout ${t}s, $(date -u +%T))"
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1; echo "   exit $?"; tail -n 25 "$OUT/$name.log"
}
run kernel_tests 100 "${KERNEL_ENV[@]}" python3 -m pytest -q -x -p no:cacheprovider tests/test_flash_alibi.py \
  "${KERNEL_TESTS[@]}"
run attention 110 python3 benchmarks/attention.py "${ATTN[@]}" --impls cudnn_nobias cudnn flash_alibi \
  --json "$OUT/attention.json"
run train_124m 110 python3 benchmarks/train_throughput.py --configs gpt2_small "${TRAIN[@]}" --naive_path "$NAIVE" \
  --json "$OUT/train.json"
run train_124m_flash 70 python3 benchmarks/train_throughput.py --configs gpt2_small "${TRAIN[@]}" \
  --attention_impl flash_alibi --json "$OUT/train.json"
run decode 60 python3 benchmarks/decode_throughput.py "${DECODE[@]}"
run train_1_3b 110 python3 benchmarks/train_throughput.py --configs "$BIG" "${TRAIN[@]}" --scan \
  --remat dots_with_no_batch_dims --json "$OUT/train.json"
run attention_sweep 100 python3 benchmarks/attention.py "${SWEEP[@]}" --impls cudnn_nobias flash_alibi --sweep \
  --json "$OUT/attention_sweep.json"
echo "== done in $((SECONDS - START))s of ${DEADLINE_S}s"
