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

# ---------------------------------------------------------------------------------------------------------------
# Architectures block (issue 15), self-contained: the architectures the harness runs beyond the three above, as
# ~100M-parameter variants of real checkpoints (measured/configs/README.md: their layer types, head and expert
# counts; fewer layers and narrower widths). Its own CSV, latency-architectures.csv, whose rows carry the
# recurrent state columns; it runs from the repository root so each row's model is a config path that
# `kvsim calibrate --data measured/results/cpu` (from the root) can read back. MLA runs in both cache forms.
# Estimated run time on this 2-core machine, idle: 13 min by the cpu profile's own predictions, which have seen
# none of these architectures; smoke runs (1 thread, shared machine) took 4-14x its TTFT and 1.5-3x its TPOT,
# so allow about an hour.
(
  cd ../../..
  for cfg in mixtral-small deepseek-v2-lite-small deepseek-v2-lite-small-decompressed deepseek-v3-small \
             gpt-oss-small mamba-small mamba2-small jamba-small qwen3-next-small; do
    case "$cfg" in
      mamba*) ARCH_POLICIES="full;int8:state=true" ;;  # no attention: only the state can change
      jamba*|qwen3-next*) ARCH_POLICIES="full;h2o:budget=128;int8;int8:state=true" ;;
      *) ARCH_POLICIES="full;h2o:budget=128;int8" ;;
    esac
    $K measure --model "measured/configs/$cfg.json" --policy "$ARCH_POLICIES" --seq 128,512,1024 --gen 16 \
      --batch 1,4 --repeats 3 --threads 2 --out measured/results/cpu/latency-architectures.csv --resume
  done
)
