#!/bin/bash
# Usage: benchmarks/ab_tiles/build.sh <dir A> <dir B> [K] [N]
# Compiles ab.cpp against the qact.h (and simd.h) in each directory, e.g. a git worktree's
# src/lmforge/kernels/csrc and this tree's, then runs it at K columns (default 576) and N weight rows
# (default 512: the weight stays in L2; 65536 streams it from DRAM). Prints ns per block and row of A and
# B and their ratio for the int4 / grouped int8 / plain int8 tiles at 1 and 4 activation rows.
# Both versions must have the interface of commit 71e2b90 on (tile_rows<Rows, MR, TWO>).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python}
torch_dir=$($py -c "import torch, os; print(os.path.dirname(torch.__file__))")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$1" "$work/a"
cp -r "$2" "$work/b"
for f in "$work"/b/*.h; do echo "// B" >> "$f"; done  # GCC's #pragma once takes identical files for one
g++ -O3 -march=native ${AB_FLAGS:-} -mavx2 -mfma -mf16c -ffp-contract=off -fopenmp "-DVA=\"$work/a/qact.h\"" "-DVB=\"$work/b/qact.h\"" \
  -I"$torch_dir/include" -o "$work/ab" "$here/ab.cpp" -L"$torch_dir/lib" -lc10 -Wl,-rpath,"$torch_dir/lib"
"$work/ab" "${3:-576}" "${4:-512}"
