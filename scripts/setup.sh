#!/usr/bin/env bash
# Create .venv with sft and everything it needs, then build the local models (no model hub). Safe to re-run.
# torch: the CUDA build where an NVIDIA GPU answers, else the CPU build (set TORCH_INDEX_URL, e.g.
# https://download.pytorch.org/whl/cpu, where PyPI would give you a CUDA build you do not want).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" "torch>=2.6,<2.15"
  else
    "${pip[@]}" torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  fi
fi
# export: llama-cpp-python compiles from source the first time (about 5 minutes on 2 cores); pip caches the wheel
"${pip[@]}" -e ".[dev,export,eval]"
.venv/bin/python -m sft_cli.export.llama_cpp >/dev/null  # llama.cpp's GGUF converter, kept in ~/.cache/sft
.venv/bin/python scripts/build_fixtures.py
