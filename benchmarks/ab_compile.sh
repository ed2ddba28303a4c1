# Sourced by the A/B harnesses' build.sh (benchmarks/ab_tiles, benchmarks/ab_attention):
#   ab_compile <header> <harness.cpp> <dir A> <dir B>
# copies both kernel directories to a scratch folder ($work, removed on exit), compiles the harness
# with <header> of each as VA / VB, and leaves the binary at $work/ab.
ab_compile() {
  local header=$1 source=$2 torch_dir
  torch_dir=$(${PYTHON:-python} -c "import torch, os; print(os.path.dirname(torch.__file__))")
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp -r "$3" "$work/a"
  cp -r "$4" "$work/b"
  for f in "$work"/b/*.h; do echo "// B" >> "$f"; done  # GCC's #pragma once takes identical files for one
  g++ -O3 -march=native ${AB_FLAGS:-} -mavx2 -mfma -mf16c -ffp-contract=off -fopenmp \
    "-DVA=\"$work/a/$header\"" "-DVB=\"$work/b/$header\"" -I"$torch_dir/include" -o "$work/ab" "$source" \
    -L"$torch_dir/lib" -lc10 -Wl,-rpath,"$torch_dir/lib"
}
