#!/usr/bin/env bash
# One short GPU check (at most ~8 minutes on one GPU): every recipe for 30 steps in bf16 and fp32, samples/s and
# peak GPU memory, and the MFU of a BERT-base-sized model against the measured bf16 matmul rate.
#   bash bench/gpu_check.sh
# On a machine without `datasets`, `evaluate` or `jiwer`, put their wheels in .whl/ first; they are installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
# The full data sets: $FINETUNE_DATA, else ../shared/data, else a shared/data copied into the checkout (GPU machines).
if [ -z "${FINETUNE_DATA:-}" ] && [ ! -d ../shared/data ] && [ -d shared/data ]; then
  export FINETUNE_DATA="$PWD/shared/data"
fi
timeout 480 python3 bench/gpu_check.py
