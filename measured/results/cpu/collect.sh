#!/usr/bin/env bash
# Reproduce the CPU latency data in this folder (each row records the machine, versions, commit and decode executor
# it came from). Random-initialised fp32 models of exact shape, 2 torch threads, nothing else running on the machine.
#   bash collect.sh              measure everything into latency-v3.csv (resumable: run it again to continue)
#   bash collect.sh --estimate   measure nothing: each block's predicted wall time with the committed CPU profile,
#                                and the total
# KVSIM="python -m kvsim.cli" runs a checkout's own code instead of the installed `kvsim`.
#
# latency-v3.csv holds rows of the native-c+linear executor (decode.c's attention and skinny matmuls);
# latency-v2.csv holds the same grid, partly collected, from the native-c executor (torch's linear, which repacks
# every weight on every call), kept as measured: calibrate refuses to fit the two together.
#
# The grid spans what users ask (7 model shapes, batch 1-16, prompts 128-4,096, every policy family) in bounded time
# on 2 cores: batch x prompt is capped at 8,192 tokens (16,384 for SmolLM2, 4,096 for the 0.5B Qwen2.5), the full
# cache runs every (prompt, batch) under the cap, the other core policies a subset that still holds batch 8-16 and
# prompts of 2,048-4,096 on every model (the extrapolation hold-outs of `kvsim calibrate`), and the remaining policy
# families run on SmolLM2 at three points. Blocks run in passes (every shape's full cache, then their core
# policies, then the rest) so that an interrupted collection already spans every shape. Estimated: 2.0 h of measuring by the committed profile, plus about 10 s
# for each of the 51 `measure` runs to build its random model (`bash collect.sh --estimate`).
set -euo pipefail
cd "$(dirname "$0")"
K=${KVSIM:-kvsim}
OUT=latency-v3.csv
RUN="--gen 16 --repeats 2 --threads 2 --out $OUT --resume"
if [ "${1:-}" = "--estimate" ]; then  # every `$K measure` line below prints its estimate; the total is summed here
  TOTAL=0
  estimate() {
    local line
    line=$(${KVSIM:-kvsim} "$@" --estimate cpu)
    echo "$line"
    TOTAL=$(python3 -c "print($TOTAL + float('$line'.split(' s (')[0].rsplit(' ', 1)[1]))")
  }
  K=estimate
  trap 'echo "total: $(python3 -c "print(f\"{$TOTAL:.0f} s ({$TOTAL / 3600:.2f} h)\")")"' EXIT
fi
# Policy families: everything kept, a recency window with sinks, score-based eviction (accumulated attention; prompt
# compression), query-aware sparse reads, per-token integer quantization at 8 and 4 bits, KIVI's per-channel keys.
CORE="streamingllm:sinks=4,window=252;h2o:budget=256;snapkv:budget=256;quest:budget=256;int8;int4;kivi"
# The other families (and a composition), on SmolLM2 only.
EXTRA="tova:budget=256;pyramidkv:budget=256;adakv:budget=256;dynamickv:budget=256;duo;lru:budget=256;\
keynorm:budget=256;learned:budget=256;kmeans:clusters=64,recent=64,every=16;rocketkv:budget=512,read_budget=256;\
minicache;mixed;lowrank:rank=32;fp8;kivi:bits=4;snapkv:budget=256 + int4"

# Shapes. SmolLM2-135M: Llama, GQA 9 / 3 KV heads, 30 layers, 49,152-token tied vocabulary (batch 8 x 2,048
# included). gemma-3-270m: MQA (1 KV head of dim 256), 512-token windows on 5 of 6 layers, 262,144-token tied
# vocabulary. llama-1024x12: the Llama shape of issue 18 (hidden 1,024, 12 layers, 16 / 4 heads). llama-mqa-768x16:
# multi-query (12 heads, 1 KV head of dim 64), 16 layers. mistral-window-768x12: every layer slides over 1,024
# tokens (prompts of 2,048-4,096 hold a window). Qwen2.5-0.5B: the wide-vocabulary shape of issue 18 (hidden 896, 24
# layers, GQA 14 / 2, 151,936 tied). GPT-2: MHA 12 / 12, learned positions; 1,024 positions, so prompts stop at 960
# (prompt + 16 generated fit).
OTHERS="gemma-3-270m models/llama-1024x12.json models/llama-mqa-768x16.json models/mistral-window-768x12.json"
# Architectures beyond attention-only dense models (issue 15): ~100M-parameter variants of real checkpoints
# (../../configs/README.md: their layer types, head and expert counts; fewer layers and narrower widths): Mixtral
# (MoE), DeepSeek-V2-Lite in both MLA cache forms, DeepSeek-V3 (MLA + MoE), gpt-oss (sinks, alternating windows,
# MoE), Mamba, Mamba-2, Jamba (attention + Mamba + MoE) and Qwen3-Next (Gated DeltaNet). Rows carry the recurrent
# state columns; each row's model is its config path relative to this folder, which `kvsim calibrate` resolves.
ARCHS="mixtral-small deepseek-v2-lite-small deepseek-v2-lite-small-decompressed deepseek-v3-small gpt-oss-small \
mamba-small mamba2-small jamba-small qwen3-next-small"
arch_policies() {
  case "$1" in
    mamba*) echo "int8:state=true" ;;  # no attention: only the state can change
    jamba*|qwen3-next*) echo "h2o:budget=128;int8;int8:state=true" ;;
    *) echo "h2o:budget=128;int8" ;;
  esac
}

# --- Pass 1: the full cache on every shape
M=smollm2-135m
$K measure --model $M --policy full --seq 128,512,1024 --batch 1,2,4,8,16 $RUN
$K measure --model $M --policy full --seq 2048 --batch 1,2,4,8 $RUN
$K measure --model $M --policy full --seq 4096 --batch 1,2,4 $RUN
for M in $OTHERS; do  # every (prompt, batch) within 8,192 tokens
  $K measure --model $M --policy full --seq 128,512 --batch 1,2,4,8,16 $RUN
  $K measure --model $M --policy full --seq 1024 --batch 1,2,4,8 $RUN
  $K measure --model $M --policy full --seq 2048 --batch 1,2,4 $RUN
  $K measure --model $M --policy full --seq 4096 --batch 1,2 $RUN
done
M=qwen2.5-0.5b
$K measure --model $M --policy full --seq 128,512 --batch 1,2,4,8 $RUN
$K measure --model $M --policy full --seq 1024,2048 --batch 1,2 $RUN
$K measure --model $M --policy full --seq 4096 --batch 1 $RUN
$K measure --model $M --policy full --seq 128 --batch 16 $RUN
M=gpt2
$K measure --model $M --policy full --seq 128,512,960 --batch 1,2,4,8 $RUN
$K measure --model $M --policy full --seq 128,512 --batch 16 $RUN
for cfg in $ARCHS; do
  $K measure --model "../../configs/$cfg.json" --policy full --seq 128,512,1024 --batch 1,4 $RUN
  $K measure --model "../../configs/$cfg.json" --policy full --seq 2048 --batch 1 $RUN
  $K measure --model "../../configs/$cfg.json" --policy full --seq 512 --batch 8 $RUN
done

# --- Pass 2: the core policy families on every shape (a subset of points that still holds batch 8-16 and prompts
# of 2,048-4,096), the architectures' own policies
M=smollm2-135m
$K measure --model $M --policy "$CORE" --seq 128,1024 --batch 1,4,16 $RUN
$K measure --model $M --policy "$CORE" --seq 512 --batch 2,8 $RUN
$K measure --model $M --policy "$CORE" --seq 2048 --batch 1,4,8 $RUN
$K measure --model $M --policy "$CORE" --seq 4096 --batch 2 $RUN
for M in $OTHERS; do
  $K measure --model $M --policy "$CORE" --seq 512 --batch 1,16 $RUN
  $K measure --model $M --policy "$CORE" --seq 1024 --batch 2,8 $RUN
  $K measure --model $M --policy "$CORE" --seq 2048 --batch 1 $RUN
  $K measure --model $M --policy "$CORE" --seq 4096 --batch 2 $RUN
done
$K measure --model qwen2.5-0.5b --policy "$CORE" --seq 512 --batch 1,8 $RUN
$K measure --model qwen2.5-0.5b --policy "$CORE" --seq 2048 --batch 1 $RUN
$K measure --model gpt2 --policy "$CORE" --seq 128,960 --batch 1,8 $RUN
for cfg in $ARCHS; do
  $K measure --model "../../configs/$cfg.json" --policy "$(arch_policies "$cfg")" --seq 128,512,1024 --batch 1,4 $RUN
done

# --- Pass 3: the remaining policy families (and a composition), on SmolLM2 at three points
M=smollm2-135m
$K measure --model $M --policy "$EXTRA" --seq 512 --batch 1 $RUN
$K measure --model $M --policy "$EXTRA" --seq 1024 --batch 4 $RUN
$K measure --model $M --policy "$EXTRA" --seq 2048 --batch 2 $RUN
