#!/usr/bin/env bash
# All GPU measurements of benchmarks/bench_compress.py in one call (~3-5 min expected on an H100/H200;
# the per-step timeouts add up to under 8 min, so a hung step cannot eat the others' time).
#
#   Qwen2.5-0.5B and -7B shapes (random weights), bf16, 32 segments of 512 tokens:
#     compression, reference-style loop vs batched (+ an 8192^3 bf16 matmul roofline),
#     peak memory of one training step (5120 tokens, checkpointing), shared weights vs two copies;
#   plus Qwen2.5-0.5B fp32 with ragged texts (padding), as a tight batched == loop check.
#
# Writes under "$OUT" (set by the GPU runner; default ./gpu-out): one JSON per step, benchmarks.md
# (every step's table with command, device, versions, date) and log.txt. 7 files in all.
#
# Tokenizer: only ICAE's special-token ids are used. The script takes the Qwen3 tokenizer from
# .cache/hicae/qwen3-tokenizer (carry it: mkdir -p .cache/hicae && cp -r ~/.cache/hicae/qwen3-tokenizer
# .cache/hicae/, then carry ".cache/hicae"), else $HICAE_TOKENIZER, else ~/.cache/hicae/..., else stub ids.
#
# Dry run on a CPU (every step with --shape tiny --device cpu, small sizes):
#   DRY_RUN=1 OUT=/tmp/gpu-dry PYTHON=.venv/bin/python bash benchmarks/gpu_run.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOG="$OUT/log.txt"
MD="$OUT/benchmarks.md"
: >"$LOG"

if [ -f .cache/hicae/qwen3-tokenizer/tokenizer.json ]; then
  TOK=.cache/hicae/qwen3-tokenizer
elif [ -n "${HICAE_TOKENIZER:-}" ] && [ -f "$HICAE_TOKENIZER/tokenizer.json" ]; then
  TOK=$HICAE_TOKENIZER
elif [ -f "$HOME/.cache/hicae/qwen3-tokenizer/tokenizer.json" ]; then
  TOK=$HOME/.cache/hicae/qwen3-tokenizer
else
  TOK=stub
fi

# In a dry run these come last on each command line, so they win (argparse keeps the last value).
DRY=()
SCALE=1
if [ "${DRY_RUN:-0}" = 1 ]; then
  DRY=(--shape tiny --device cpu --train-tokens 256 --warmup 0 --repeats 1)
  SCALE=3  # CPU steps are slower than the GPU ones they stand for
fi

declare -a SUMMARY=()
step() {  # step NAME TIMEOUT_S ARGS...
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  local t0=$SECONDS
  echo "=== $name (timeout ${limit}s): $*" | tee -a "$LOG"
  timeout -k 15 "$limit" "$PY" benchmarks/bench_compress.py "$@" --tokenizer "$TOK" \
    --out "$OUT/$name.json" --append-md "$MD" "${DRY[@]}" >>"$LOG" 2>&1
  local rc=$?
  local what=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && what="TIMED OUT"
  [ $rc -ne 0 ] && [ "$what" = ok ] && what="FAILED"
  SUMMARY+=("$name: rc=$rc $what, $((SECONDS - t0)) s")
  echo "=== $name: rc=$rc $what in $((SECONDS - t0)) s" | tee -a "$LOG"
}

{
  echo "date: $(date -Is)"
  echo "tokenizer: $TOK; dry run: ${DRY_RUN:-0}"
  command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  timeout 60 "$PY" -c 'import torch, transformers, peft; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(), "| transformers", transformers.__version__, "| peft", peft.__version__)'
} >>"$LOG" 2>&1

step compress_0.5b 75 --shape qwen2.5-0.5b --device cuda --dtype bf16 --segments 32 --texts 4 --warmup 2 --repeats 7
step compress_7b 140 --shape qwen2.5-7b --device cuda --dtype bf16 --segments 32 --texts 4 --warmup 2 --repeats 5 --roofline
step train_0.5b 75 --shape qwen2.5-0.5b --device cuda --dtype bf16 --train-memory --skip-compress --train-tokens 5120
step train_7b 140 --shape qwen2.5-7b --device cuda --dtype bf16 --train-memory --skip-compress --train-tokens 5120
step compress_0.5b_fp32_ragged 50 --shape qwen2.5-0.5b --device cuda --dtype fp32 --segments 32 --texts 4 --ragged --warmup 1 --repeats 3

{
  echo
  echo "=== summary"
  printf '%s\n' "${SUMMARY[@]}"
} | tee -a "$LOG"
# Exit non-zero if any step failed, after everything has been written.
! printf '%s\n' "${SUMMARY[@]}" | grep -qv 'rc=0 '
