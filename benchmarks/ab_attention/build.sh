#!/bin/bash
# Usage: benchmarks/ab_attention/build.sh <dir A> <dir B> [slots] [layers]
# Compiles ab.cpp against the attention.h (and simd.h) in each directory, e.g. a git worktree's
# src/lmforge/kernels/csrc and this tree's, and times attend_part (3 query heads on one key/value head,
# head size 64, fp16 cache) over parts of 32 slots: with 1 layer's cache the parts stay in L2, with 128
# layers' (~18 MB) they come from memory. Prints ns per part of A and B, their ratio and the largest
# relative difference of the two versions' outputs. Code placement moves a version's time: one tree on
# both sides measured 655 / 538 ns in L2 (Zen 2), so run A and B both ways round before trusting a ratio.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../ab_compile.sh"
ab_compile attention.h "$here/ab.cpp" "$1" "$2"
"$work/ab" "${3:-544}" 1
"$work/ab" "${3:-544}" "${4:-128}"
