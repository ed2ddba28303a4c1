#!/usr/bin/env bash
# The speed runs behind the "Speed" section of benchmarks/RESULTS.md (batch-1 decode targets): the
# default model's Q4_1 blocks with each activation mode (--act-bits 32 / 16 / 8) beside llama.cpp, its
# Q8_0 twin (requantize_gguf.py) beside llama.cpp, the default model in fp32 (dequantized) and int8 (RTN
# at load, fp32 head), and a TinyLlama-1.1B-shaped random GGUF
# in Q4_0, Q4_K, Q4_K_M, Q5_K_M, Q6_K and F32, each beside llama.cpp (llama-cpp-python, when installed) on the same file.
# Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
tmp=${TMPDIR:-/tmp}
common=(--max-new-tokens 64 --num-iter 3 --num-warmup 1 --greedy --seed 0 --threads 2)

lmforge bench -m smollm2-135m-instruct -p 32 512 "${common[@]}" --compare llamacpp \
  --output-json "benchmarks/results/speed-${stamp}-q4_1-act16.json" | tee "benchmarks/results/speed-${stamp}-q4_1-act16.md"
for bits in 32 8; do
  lmforge bench -m smollm2-135m-instruct -p 32 512 --act-bits "$bits" "${common[@]}" \
    --output-json "benchmarks/results/speed-${stamp}-q4_1-act${bits}.json" \
    | tee "benchmarks/results/speed-${stamp}-q4_1-act${bits}.md"
done
q8="$tmp/smollm2-135m-instruct-Q8_0.gguf"  # the default model's int8 twin: Q8_0 blocks everywhere
[ -f "$q8" ] || python benchmarks/requantize_gguf.py --type Q8_0 --out "$q8"
for bits in 16 8; do
  lmforge bench -m "$q8" -p 32 --act-bits "$bits" "${common[@]}" --compare llamacpp \
    --output-json "benchmarks/results/speed-${stamp}-q8_0-act${bits}.json" \
    | tee "benchmarks/results/speed-${stamp}-q8_0-act${bits}.md"
done

lmforge bench -m smollm2-135m-instruct --dequantize -p 32 "${common[@]}" \
  --output-json "benchmarks/results/speed-${stamp}-fp32.json" | tee "benchmarks/results/speed-${stamp}-fp32.md"
lmforge bench -m smollm2-135m-instruct --quantize int8 -p 32 "${common[@]}" \
  --output-json "benchmarks/results/speed-${stamp}-int8.json" | tee "benchmarks/results/speed-${stamp}-int8.md"

for type in Q4_0 Q4_K Q4_K_M Q5_K_M Q6_K F32; do  # the GGUF types with the default --act-bits 16
  model="$tmp/tinyllama-1.1b-random-${type}.gguf"
  [ -f "$model" ] || python benchmarks/make_tinyllama_gguf.py --type "$type" --out "$model"
  lmforge bench -m "$model" --random-prompt -p 32 --max-new-tokens 32 --num-iter 2 --num-warmup 1 --greedy \
    --seed 0 --threads 2 --compare llamacpp \
    --output-json "benchmarks/results/speed-${stamp}-tinyllama-${type}.json" \
    | tee "benchmarks/results/speed-${stamp}-tinyllama-${type}.md"
done
