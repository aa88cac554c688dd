#!/usr/bin/env bash
# Every GPU measurement in two prepared calls of the device tool, each step under its own timeout,
# so a hung step cannot eat the others' time. Results go under "$OUT" (default ./gpu-out).
#
#   PART=bench (~6 min on an H100/H200): benchmarks/run.py on random-weight Qwen2.5 shapes, bf16:
#     qwen2.5-0.5b: compression (batched vs loop), prefix reuse for 1/10/100 questions, decode
#                   (dynamic vs static), one training step at 5120 tokens (shared vs two copies);
#     qwen2.5-7b:   decode ms/token (eager dynamic vs static vs compiled, against the weight-read
#                   floor at the copy bandwidth measured there), training step at 5120 tokens (peak
#                   memory, MFU against the matmul roofline measured there), compression (loop vs
#                   batched vs torch.compile'd encoder, share of the roofline).
#   PART=proxy (~5 min): experiments/proxy.py --gpu, the quality proxy's larger configuration.
#
# Carry: .cache/hicae (the Qwen3 tokenizer: mkdir -p .cache/hicae && cp -r ~/.cache/hicae/qwen3-tokenizer
# .cache/hicae/; without it stub special-token ids are used, which changes no timing) and, for the
# proxy, .cache/proxy (the unpacked corpus: see benchmarks/README.md).
#
# Dry run on a CPU (tiny shapes, every code path including the compiled ones):
#   DRY_RUN=1 PART=bench OUT=/tmp/gpu-dry PYTHON=.venv/bin/python bash benchmarks/gpu_run.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
PART=${PART:-bench}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOG="$OUT/log-$PART.txt"
: >"$LOG"

if [ -f .cache/hicae/qwen3-tokenizer/tokenizer.json ]; then
  TOK=.cache/hicae/qwen3-tokenizer
elif [ -n "${HICAE_TOKENIZER:-}" ] && [ -f "$HICAE_TOKENIZER/tokenizer.json" ]; then
  TOK=$HICAE_TOKENIZER
else
  TOK=stub
fi

declare -a SUMMARY=()
step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name (timeout ${limit}s): $*" | tee -a "$LOG"
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  local what=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && what="TIMED OUT"
  [ $rc -ne 0 ] && [ "$what" = ok ] && what="FAILED"
  SUMMARY+=("$name: rc=$rc $what, $((SECONDS - t0)) s")
  echo "=== $name: rc=$rc $what in $((SECONDS - t0)) s" | tee -a "$LOG"
}

{
  echo "date: $(date -Is); part $PART; tokenizer: $TOK; dry run: ${DRY_RUN:-0}"
  command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  timeout 60 "$PY" -c 'import torch, transformers, peft; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(), "| transformers", transformers.__version__, "| peft", peft.__version__)'
} >>"$LOG" 2>&1

if [ "$PART" = bench ]; then
  if [ "${DRY_RUN:-0}" = 1 ]; then
    S05=(--shape tiny --device cpu --train-tokens 256 --prefix-slots 256 --questions 1,10)
    S7=(--shape tiny --device cpu --train-tokens 256 --modes dynamic,static,compiled)
    L05=240; L7=400
  else
    S05=(--shape qwen2.5-0.5b --device cuda --dtype bf16)
    S7=(--shape qwen2.5-7b --device cuda --dtype bf16 --repeats 3)
    L05=110; L7=260
  fi
  step run_0.5b $L05 "$PY" benchmarks/run.py "${S05[@]}" --tokenizer "$TOK" --sections compress,prefix,decode,train \
    --modes dynamic,static --out-dir "$OUT/qwen2.5-0.5b"
  step run_7b $L7 "$PY" benchmarks/run.py "${S7[@]}" --tokenizer "$TOK" --sections decode,train,compress \
    --roofline --compile --bandwidth --out-dir "$OUT/qwen2.5-7b"
elif [ "$PART" = proxy ]; then
  if [ "${DRY_RUN:-0}" = 1 ]; then EXTRA=(--device cpu --dry_run); LP=300; else EXTRA=(); LP=300; fi
  step proxy_gpu $LP "$PY" experiments/proxy.py --gpu --seed 0 --cache_dir .cache/proxy --out_dir "$OUT/proxy-gpu" "${EXTRA[@]}"
  rm -rf "$OUT/proxy-gpu/work"  # checkpoints: too large to bring back, and not needed
fi

{
  echo
  echo "=== summary ($PART)"
  printf '%s\n' "${SUMMARY[@]}"
} | tee -a "$LOG"
! printf '%s\n' "${SUMMARY[@]}" | grep -qv 'rc=0 '
