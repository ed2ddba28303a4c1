#!/usr/bin/env bash
# The speed runs behind the "Speed" section of benchmarks/RESULTS.md (batch-1 decode targets): the
# default model in fp32 (dequantized) and int8 (RTN at load), and a TinyLlama-1.1B-shaped random GGUF
# in Q4_0 and F32, each beside llama.cpp (llama-cpp-python, when installed) on the same file.
# The default model's Q4_1 rows come from run_standard.sh. Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
tmp=${TMPDIR:-/tmp}
common=(--max-new-tokens 64 --num-iter 3 --num-warmup 1 --greedy --seed 0 --threads 2)

lmforge bench -m smollm2-135m-instruct --dequantize -p 32 "${common[@]}" \
  --output-json "benchmarks/results/speed-${stamp}-fp32.json" | tee "benchmarks/results/speed-${stamp}-fp32.md"
lmforge bench -m smollm2-135m-instruct --quantize int8 -p 32 "${common[@]}" \
  --output-json "benchmarks/results/speed-${stamp}-int8.json" | tee "benchmarks/results/speed-${stamp}-int8.md"

for type in Q4_0 F32; do
  model="$tmp/tinyllama-1.1b-random-${type}.gguf"
  [ -f "$model" ] || python benchmarks/make_tinyllama_gguf.py --type "$type" --out "$model"
  lmforge bench -m "$model" --random-prompt -p 32 --max-new-tokens 32 --num-iter 2 --num-warmup 1 --greedy \
    --seed 0 --threads 2 --compare llamacpp \
    --output-json "benchmarks/results/speed-${stamp}-tinyllama-${type}.json" \
    | tee "benchmarks/results/speed-${stamp}-tinyllama-${type}.md"
done
