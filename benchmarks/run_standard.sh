#!/usr/bin/env bash
# The standard benchmark runs behind benchmarks/RESULTS.md: the default model (smollm2-135m-instruct),
# input 32 and 512 tokens, 128 new tokens, batch 1 and 4, greedy, with Hugging Face transformers and
# llama.cpp (llama-cpp-python, when installed; batch 1) beside it.
# Run on an otherwise idle machine; results land in benchmarks/results/ (JSON, CSV, plot) and the
# markdown table on stdout goes to benchmarks/results/standard-<date>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)

lmforge bench --roofline  # fresh machine limits for this run (also cached for later runs)

lmforge bench \
  --model smollm2-135m-instruct --dtype float32 \
  --input-tokens 32 512 --max-new-tokens 128 --batch-size 1 4 \
  --num-iter 5 --num-warmup 1 --greedy --seed 0 \
  --compare hf llamacpp \
  --output-json "benchmarks/results/standard-${stamp}.json" \
  --output-csv "benchmarks/results/standard-${stamp}.csv" \
  | tee "benchmarks/results/standard-${stamp}.md"
