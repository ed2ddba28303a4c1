#!/usr/bin/env bash
# The CUDA path on an NVIDIA GPU (issue 7, item 5), as one short run:
#   1. benchmarks/cuda_check.py: fp32 logits on CUDA against the CPU, --compile (CUDA graphs) steps
#      against the same steps uncompiled, the int8 / int4 products against their definition (a failure
#      is marked in the log, and the benches run anyway);
#   2. `lmforge bench` on a Llama-2-7B-shaped model with random weights (benchmarks/configs/llama-2-7b),
#      batch 1, a 16-token prompt and 200 new tokens: bf16, int8 and int4 (RTN at load, group 128) with
#      --compile, then bf16 op by op as the baseline.
# gpt-fast's published A100 numbers for this shape (torch.compile, CUDA graphs): bf16 104.9, int8 155.6,
# int4 196.8 tok/s. Runs lmforge from src/ (no install): python3 needs torch with CUDA, safetensors,
# tokenizers, numpy and jinja2. LMFORGE_NO_NATIVE=1 skips building the CPU kernels, which CUDA runs do not
# use. Files go to $OUT when set (the device tool), else benchmarks/results. Each bench is capped at
# $CASE_TIMEOUT seconds (default 240): the first compiled step of each precision compiles.
# A dry run without a GPU: DEVICE=cpu MODEL=<folder with a small config.json> LMFORGE_DECODE_STEP=0.
# Arguments name the benches to run, in order (default: bf16-compile int4-compile int8-compile bf16-eager);
# SKIP_CHECK=1 skips step 1 (a second call on the same machine, after a first that passed it).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
export PYTHONPATH=src LMFORGE_NO_NATIVE=1 PYTHONUNBUFFERED=1
device=${DEVICE:-cuda}
log="$out/cuda-${stamp}.md"  # the checks and every bench table; one JSON file per bench beside it
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; } 2>&1 | tee "$log"
if [ -z "${SKIP_CHECK:-}" ]; then
  python3 benchmarks/cuda_check.py --device "$device" 2>&1 | tee -a "$log"
  # the benches still run (a GPU is seldom at hand), but their numbers are suspect: the log says so
  [ "${PIPESTATUS[0]}" -eq 0 ] || echo "CHECKS FAILED: do not trust the numbers below without the fix" | tee -a "$log"
fi

common=(-m "${MODEL:-benchmarks/configs/llama-2-7b}" --random-weights --random-prompt --device "$device"
        --dtype bfloat16 -p 16 -n 200 --num-iter 3 --num-warmup 1 --greedy --seed 0)
bench() {  # name, extra flags...
  local name=$1; shift
  echo "## $name: lmforge bench ${common[*]} $*" | tee -a "$log"
  timeout "${CASE_TIMEOUT:-240}" python3 -m lmforge bench "${common[@]}" "$@" \
    --output-json "$out/cuda-${stamp}-${name}.json" 2>&1 | tee -a "$log"
}
declare -A flags=([bf16-compile]="--compile" [int4-compile]="--compile --quantize int4"
                  [int8-compile]="--compile --quantize int8" [bf16-eager]="")
for name in "${@:-bf16-compile int4-compile int8-compile bf16-eager}"; do
  for one in $name; do
    [ -n "${flags[$one]+set}" ] || { echo "unknown bench $one (known: ${!flags[*]})"; exit 2; }
    # shellcheck disable=SC2086
    bench "$one" ${flags[$one]}
  done
done
