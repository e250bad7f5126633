#!/usr/bin/env bash
# Reproduce the CPU latency data in this folder (each row records the machine, versions and commit it came
# from). Random-initialised models of exact shape, 2 torch threads, nothing else running on the machine.
set -euo pipefail
cd "$(dirname "$0")"
K=${KVSIM:-kvsim}
POLICIES="full;streamingllm:sinks=4,window=124;h2o:budget=128;tova:budget=128;snapkv:budget=128;quest:budget=128;int8;kivi"
for model in smollm2-135m gemma-3-270m; do
  $K measure --model "$model" --policy "$POLICIES" --seq 128,256,512,1024 --gen 16 --batch 1,4 \
    --repeats 3 --threads 2 --out latency.csv --resume
done
# GPT-2 has 1024 positions: the longest prompt is 960 so that prompt + generated tokens fit.
$K measure --model gpt2 --policy "$POLICIES" --seq 128,256,512,960 --gen 16 --batch 1,4 \
  --repeats 3 --threads 2 --out latency.csv --resume
