#!/usr/bin/env bash
# One prepared GPU check (about 10 minutes on an H100/H200): the flash-ALiBi kernel tests compiled (not
# interpreted), attention timings at the target point, the train step against the naive reference in the same
# process, and decode throughput. Every log and JSON lands in $OUT (default /tmp/gpu_out).
#
# The GPU host needs jax with CUDA, flax, optax, orbax (usually there) plus gin-config, clu and ml-collections
# (pure-Python wheels; tensorflow/seqio are NOT needed: the model, train step and decoding import without them).
# Before the call, on a machine with pip:
#   mkdir -p .whl .bench && cp ../shared/bench/naive_flax_gpt.py .bench/
#   pip download --no-deps --only-binary=:all: -d .whl gin-config==0.5.0 clu==0.0.12 ml-collections
# and carry `.whl` and `.bench` (both git-ignored) with the working tree.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
NAIVE=${NAIVE:-.bench/naive_flax_gpt.py}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date -u;
  python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; } \
  2>&1 | tee "$OUT/device.txt"
run() {  # name timeout_s command...
  local name=$1 t=$2; shift 2
  echo "== $name ($(date -u +%T))"
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1; echo "   exit $?"; tail -n 25 "$OUT/$name.log"
}
run kernel_tests 150 env JAX_PLATFORMS=cuda python3 -m pytest -q -x -p no:cacheprovider tests/test_flash_alibi.py
run attention 150 python3 benchmarks/attention.py --seq-lens 2048 8192 --head-dims 64 128 \
  --impls cudnn_nobias cudnn flash_alibi --json "$OUT/attention.json"
run train_124m 150 python3 benchmarks/train_throughput.py --configs gpt2_small --naive_path "$NAIVE" \
  --json "$OUT/train.json"
run train_124m_flash 120 python3 benchmarks/train_throughput.py --configs gpt2_small --attention_impl flash_alibi \
  --json "$OUT/train.json"
run train_1_3b 150 python3 benchmarks/train_throughput.py --configs gpt_1_3b --scan --remat dots_with_no_batch_dims \
  --json "$OUT/train.json"
run decode 120 python3 benchmarks/decode_throughput.py
