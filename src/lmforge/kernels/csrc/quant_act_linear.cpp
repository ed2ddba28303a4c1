// Quantized-weight linear layers with integer activations, for decode-sized inputs on x86 CPUs with
// AVX2 (+ FMA, F16C): y [M, N] = x [M, K] @ W.T for the int4 and int8 block layouts of quant_linear.cpp.
//
// Each row of x is rounded per block of 32 columns to int8 codes a with scale d = max|x| / 127
// (round to nearest): x ~ d * a. With `bits` = 16 the rounding error is rounded once more, to int8
// codes b with scale d / 254: x ~ d * (a + b / 254), about 15 bits per block (relative error ~2e-5 of
// the block's largest value), which makes the product all but exact. A block's dot product with a
// weight row is then integer arithmetic,
//   sum_j w_j x_j = scale * d * (sum q_j a_j [+ sum q_j b_j / 254]) + min * sum_j x_j,
// the last term with the exact fp32 sum of the block's x, products of unsigned and signed bytes
// (VNNI's dpbusd where the CPU has it, maddubs + madd otherwise; see qact.h). int4 weights hold most of
// a row in interleaved groups of 8 blocks (as do grouped int8 weights, GGUF Q8_0), whose integer sums
// come out one block per vector lane, so that 8 blocks share one conversion to fp32 and one multiply
// (two planes: a and b products, joined as 254 sa + sb; without VNNI, from two rows on, int16 products of
// the widened codes with c = 254 a + b); the blocks left over, and plain int8 weights,
// take one block per vector (two planes: one
// int16 product with c = 254 a + b). That takes fewer instructions per weight than widening every
// weight to fp32 (quant_linear.cpp); benchmarks/kernels.py measures both.
// reference.py (int4_linear / int8_linear with act_bits) defines the same rounding in PyTorch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "amx.h"
#include "layouts.h"
#include "qact.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using namespace lmforge_qact;

constexpr int64_t MAX_ROWS = 4;         // activation rows per pass over a tile's weights
constexpr int64_t CHUNK_ROWS = 1024;   // rows of x rounded at a time (4 bytes a value with two planes)
constexpr int64_t PANEL_BYTES = 65536;  // weight bytes per task (in L2), read by every pass of the rows of x

template <int MR, bool TWO, typename Rows>
void gemv(const Rows& w, const QRow* xr, float* y, int64_t N, int64_t bytes_per_row) {
  constexpr int R = tile_rows<Rows, MR, TWO>();
  parallel_tiles<R>(N, bytes_per_row, [&](int64_t n0, auto rows) { dot_tile<decltype(rows)::value, MR, TWO>(w, n0, xr, y, N); });
}

// Weight rows n_begin .. n_end - 1 against MR activation rows: whole tiles, then single rows.
template <int MR, bool TWO, typename Rows>
void panel(const Rows& w, int64_t n_begin, int64_t n_end, const QRow* xr, float* y, int64_t N) {
  constexpr int R = tile_rows<Rows, MR, TWO>();
  int64_t n0 = n_begin;
  for (; n0 + R <= n_end; n0 += R) dot_tile<R, MR, TWO>(w, n0, xr, y, N);
  for (; n0 < n_end; ++n0) dot_tile<1, MR, TWO>(w, n0, xr, y, N);
}

#if LMFORGE_AMX
// y [M, N] on the AMX tiles (amx.h) for the weight's whole tiles of 16 rows, spread over the threads, each
// with all the rows of x; returns the weight rows done (the caller does the rest with the vector tiles).
template <bool TWO, typename Rows>
int64_t amx_rows(const Rows& w, const RoundedRows& rounded, float* y, int64_t M, int64_t N) {
  namespace amx = lmforge_amx;
  amx::ActPasses act;
  act.build(rounded.rows.data(), M, TWO, w.K, w.grouped(), amx::scale_block<Rows>());
  const int64_t tiles = N / amx::TILE_ROWS;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      amx::multiply_tile(w, N, t * amx::TILE_ROWS, rounded.rows.data(), M, TWO, act, y, N);
    amx::release();
  });
  return tiles * amx::TILE_ROWS;
}
#endif

// y [M, N]. Up to MAX_ROWS rows: one pass over the weights. More (a prompt): each task takes a panel
// of weight rows that stays in cache and runs all the rows of x past it, MAX_ROWS at a time, so that
// the weights are read from memory once (the rounded rows, 2-4 bytes a value, come from L2 / L3).
template <bool TWO, typename Rows>
void gemv_rows(const Rows& w, const float* x, float* y, int64_t M, int64_t N, int64_t K, int64_t bytes_per_row) {
  RoundedRows rounded;
  rounded.reserve(M, K, TWO);
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) { rounded.round_rows(x, m0, m1, K, TWO, w.grouped()); });
  auto rows = [&](int64_t m0, auto pass) {
    const QRow* xr = rounded.rows.data() + m0;
    switch (std::min(MAX_ROWS, M - m0)) {
      case 1: pass(std::integral_constant<int, 1>{}, xr, y + m0 * N); break;
      case 2: pass(std::integral_constant<int, 2>{}, xr, y + m0 * N); break;
      case 3: pass(std::integral_constant<int, 3>{}, xr, y + m0 * N); break;
      default: pass(std::integral_constant<int, 4>{}, xr, y + m0 * N); break;
    }
  };
#if LMFORGE_AMX
  if (lmforge_amx::available() && M >= lmforge_amx::MIN_ROWS) {
    const int64_t done = amx_rows<TWO>(w, rounded, y, M, N);
    for (int64_t m0 = 0; m0 < M && done < N; m0 += MAX_ROWS)
      rows(m0, [&](auto mr, const QRow* xr, float* ym) { panel<decltype(mr)::value, TWO>(w, done, N, xr, ym, N); });
    return;
  }
#endif
  if (M <= MAX_ROWS) {
    rows(0, [&](auto mr, const QRow* xr, float* ym) { gemv<decltype(mr)::value, TWO>(w, xr, ym, N, bytes_per_row); });
    return;
  }
  const int64_t per_thread = 4 * at::get_num_threads();  // panels, at least, for an even split
  const int64_t fit = std::min(PANEL_BYTES / bytes_per_row, (N + per_thread - 1) / per_thread);
  const int64_t panel_rows = std::max<int64_t>(4, fit / 4 * 4);  // a multiple of every tile's rows
  at::parallel_for(0, (N + panel_rows - 1) / panel_rows, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n_begin = p * panel_rows, n_end = std::min(N, n_begin + panel_rows);
      for (int64_t m0 = 0; m0 < M; m0 += MAX_ROWS)
        rows(m0, [&](auto mr, const QRow* xr, float* ym) { panel<decltype(mr)::value, TWO>(w, n_begin, n_end, xr, ym, N); });
    }
  });
}

template <typename Rows>
at::Tensor run(const at::Tensor& x, const Rows& w, int64_t N, int64_t bytes_per_row, int64_t bits) {
  TORCH_CHECK(bits == 8 || bits == 16, "activation bits must be 8 or 16, got ", bits);
  const int64_t K = x.size(-1);
  const at::Tensor x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = x2.size(0);
  at::Tensor y = at::empty({M, N}, x2.options());
  for (int64_t m0 = 0; m0 < M; m0 += CHUNK_ROWS) {  // a long prompt in chunks: bounded scratch
    const int64_t rows = std::min(CHUNK_ROWS, M - m0);
    const float* xm = x2.data_ptr<float>() + m0 * K;
    float* ym = y.data_ptr<float>() + m0 * N;
    if (bits == 16) {
      gemv_rows<true>(w, xm, ym, rows, N, K, bytes_per_row);
    } else {
      gemv_rows<false>(w, xm, ym, rows, N, K, bytes_per_row);
    }
  }
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape).to(x.scalar_type());
}

}  // namespace

// Entry points for quant_linear.cpp, which checks the arguments and owns the op registrations.
namespace lmforge {

at::Tensor int4_linear_qact(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
                            const at::Tensor& mins, int64_t bits) {
  const int64_t N = qs.size(0), K = qs.size(1) * 2;
  return with_int4<Int4Rows>(qs.data_ptr<uint8_t>(), scales, mins, K, [&](const auto& w) { return run(x, w, N, K / 2, bits); });
}

at::Tensor int8_linear_qact(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, const at::Tensor& mins,
                            int64_t bits) {
  const int64_t N = q.size(0), K = q.size(1);
  return with_int8<Int8Rows>(q, scales, mins, K, [&](const auto& w) { return run(x, w, N, K, bits); });
}

// Whether prompts' products run on the AMX tiles (amx.h).
bool amx_products() { return lmforge_amx::available(); }

}  // namespace lmforge
