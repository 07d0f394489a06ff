#!/usr/bin/env bash
# Everything quantcal still measures on a GPU, in one run of at most ten minutes (benchmarks/gpu_suite.py says what
# and how the bundle is prepared). Here:  bash benchmarks/gpu_suite.sh --dry-run
# On the device machine (carry .gpu):    bash benchmarks/gpu_suite.sh --bundle .gpu --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if [[ " $* " != *" --dry-run "* ]] && [ -d .gpu/wheels ]; then
  # the GPU image lacks these (no network there): installed beside its own torch, never replacing it; the few
  # pure-Python packages published only as source archives build with the image's own setuptools
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target /tmp/quantcal-site .gpu/wheels/*
  export PYTHONPATH="/tmp/quantcal-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" benchmarks/gpu_suite.py "$@"
