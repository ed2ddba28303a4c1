#!/bin/bash
# Usage: benchmarks/ab_tiles/build.sh <dir A> <dir B> [K] [N]
# Compiles ab.cpp against the qact.h (and simd.h) in each directory, e.g. a git worktree's
# src/lmforge/kernels/csrc and this tree's, then runs it at K columns (default 576) and N weight rows
# (default 512: the weight stays in L2; 65536 streams it from DRAM). Prints ns per block and row of A and
# B and their ratio for the int4 / grouped int8 / plain int8 tiles at 1 and 4 activation rows.
# Both versions must have the interface of commit 71e2b90 on (tile_rows<Rows, MR, TWO>).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../ab_compile.sh"
ab_compile qact.h "$here/ab.cpp" "$1" "$2"
"$work/ab" "${3:-576}" "${4:-512}"
