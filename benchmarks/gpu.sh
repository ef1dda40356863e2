#!/usr/bin/env bash
# Issue 27's GPU rows (item 6) on one NVIDIA GPU, in one run of about 6 minutes:
#
#   bash benchmarks/gpu.sh NANOGPT_DIR RESULTS_DIR [EXTRA]
#
# 1. train_throughput.py: GPT-2 small (12 x 12 x 768, context 1024, batch 16) in
#    bfloat16 with cuDNN flash attention, our train_step against the minimal GPT
#    under torch.compile in the same process, interleaved; MFU against the measured
#    bf16 matmul roof (peak.py: the larger of JAX's and cuBLAS's 8192^3 product);
#    then a jax.profiler trace of 3 of our steps (RESULTS_DIR/gpt2_small.xplane.pb).
# 2. cli_vs_nanogpt.py --device=cuda: both CLIs as a GPU user runs them, nanoGPT's own
#    train.py with --compile=True --dtype=bfloat16 against python -m transformer_jax.main.
# 3. With EXTRA=1 and time left: ours alone at batch 32, and with XLA's attention.
#
# NANOGPT_DIR holds nanoGPT's train.py, model.py, configurator.py, config/ and
# data/shakespeare_char/ (benchmarks/cli_runs.py). Each step has a time limit, so
# one that hangs or fails leaves the others their time; logs go to RESULTS_DIR.
# Needs this package's dependencies and torch; an image without ml-collections and
# grain (the lent H100's had neither) gets them as wheels: ml-collections, grain,
# array-record, portpicker. Measured rows: benchmarks/README.md, "GPU: GPT-2 small".
set -u
NANOGPT=${1:?usage: bash benchmarks/gpu.sh NANOGPT_DIR RESULTS_DIR [EXTRA]}
RESULTS=${2:?usage: bash benchmarks/gpu.sh NANOGPT_DIR RESULTS_DIR [EXTRA]}
EXTRA=${3:-0}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
START=$SECONDS

step() {  # step NAME LIMIT_S COMMAND...: runs COMMAND under a limit, output to NAME.log.
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s, at $((SECONDS - START)) s)"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
  local rc=$?
  grep -v '^\s*$' "$RESULTS/$name.log" | tail -n 12
  echo "== $name: exit $rc after $((SECONDS - START)) s"
}

if ! nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    2>/dev/null; then
  echo "benchmarks/gpu.sh needs an NVIDIA GPU and nvidia-smi finds none; on a CPU run" \
    "benchmarks/cli_vs_nanogpt.py and benchmarks/train_throughput.py instead." >&2
  exit 2
fi
# cli_runs' own check of the nanoGPT directory (one line, exit 1 when it lacks a file).
"$PYTHON" -c 'import sys; from benchmarks import cli_runs; cli_runs.check_nanogpt_dir(sys.argv[1])' \
  "$NANOGPT" || exit 2
mkdir -p "$RESULTS"

# JAX and PyTorch share the GPU in this process: half its memory for each.
XLA_PYTHON_CLIENT_MEM_FRACTION=.45 step train_throughput 240 \
  "$PYTHON" benchmarks/train_throughput.py --workloads=gpt2_small --attention_impl=cudnn \
  --peers=gpt_compile --rounds=5 --peak_size=8192 --profile_dir="$RESULTS/profile" \
  --output="$RESULTS/train_throughput_gpu.json"
find "$RESULTS/profile" -name '*.xplane.pb' -exec cp {} "$RESULTS/gpt2_small.xplane.pb" \; \
  2>/dev/null
rm -rf "$RESULTS/profile"

ROOF=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['roof']['roof_flops'] / 1e12)" \
  "$RESULTS/train_throughput_gpu.json" 2>/dev/null || echo 0)
step cli_vs_nanogpt 270 \
  "$PYTHON" benchmarks/cli_vs_nanogpt.py --device=cuda --shapes=gpt2_small_gpu --steps=30 \
  --log_every=10 --rounds=1 --nanogpt_dir="$NANOGPT" --roof_tflops="$ROOF" \
  --output="$RESULTS/cli_vs_nanogpt_gpu.json"

if [ "$EXTRA" = 1 ]; then
  step batch32 120 "$PYTHON" benchmarks/train_throughput.py --workloads=gpt2_small \
    --attention_impl=cudnn --peers= --rounds=5 --batch_size=32 --peak_size=8192 \
    --output="$RESULTS/train_throughput_gpu_batch32.json"
  step xla_attention 120 "$PYTHON" benchmarks/train_throughput.py --workloads=gpt2_small \
    --attention_impl=xla --peers= --rounds=5 --peak_size=8192 \
    --output="$RESULTS/train_throughput_gpu_xla.json"
fi
echo "== all steps done after $((SECONDS - START)) s"
