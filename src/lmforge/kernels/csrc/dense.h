// The tiles of dense_linear.cpp: one weight row x MR activation rows for decode steps (dot_row, shared with
// decode_step.cpp) and the prompt kernel (gemm, also quant_linear.cpp's dequantized panels), fp32
// accumulation.
#pragma once

#include <ATen/Parallel.h>

#include <immintrin.h>

#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace lmforge_dense {

using lmforge_simd::hsum;
using lmforge_simd::load8;

// The fp32 vectors of dot_row and gemm: 16 lanes (AVX-512) and 8 (AVX2), loading fp32, bf16 or fp16.
#if defined(__AVX512F__)
struct Lanes16 {
  using T = __m512;
  static constexpr int L = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T load(const c10::BFloat16* p) {  // bf16 is the high half of an fp32
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  }
  static T load(const c10::Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static float sum(T v) { return _mm512_reduce_add_ps(v); }
};
#endif

struct Lanes8 {
  using T = __m256;
  static constexpr int L = 8;
  static T zero() { return _mm256_setzero_ps(); }
  template <typename W>
  static T load(const W* p) { return load8(p); }
  static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static float sum(T v) { return hsum(v); }
};

// y[m * ldy] = dot(w, x row m) for one weight row and MR activation rows. One row at a time, read
// front to back with no software prefetch, streams as fast as a plain sum over the weights (17-19
// GB/s here), where 4 rows side by side with prefetching reached 12-14 GB/s (a standalone harness
// over a 230 MB matrix, benchmarks/RESULTS.md). The products are spread over A accumulators per
// activation row along k, so that the FMA latency never limits the stream. In the 512-bit build
// (LMFORGE_ZMM = 1: full-width 512-bit units) the loads are 512-bit, with a software prefetch 8 KiB
// ahead: on an Emerald Rapids VM a harness streaming 369 MB of fp32 rows (benchmarks/probes/gemv.c,
// 2 threads) read 30-32 GB/s against 25-26 with 256-bit loads, and dense_linear over 8 x 46 MB
// 31.8-33.8 GB/s with the prefetch against 26.5-27.5 without (TinyLlama-1.1B F32 decode 7.1-7.3 ->
// 7.4-7.5 tok/s).
#if defined(__AVX512F__) && defined(LMFORGE_ZMM) && LMFORGE_ZMM == 1
using RowVec = Lanes16;
constexpr bool ROW_PREFETCH = true;
#else
using RowVec = Lanes8;
constexpr bool ROW_PREFETCH = false;
#endif

template <int MR, typename W>
inline void dot_row(const W* w, int64_t K, const float* x, float* y, int64_t ldy) {
  using V = RowVec;
  constexpr int A = MR == 1 ? 4 : 2, L = V::L;
  constexpr int64_t AHEAD = 8192 / sizeof(W);  // 8 KiB ahead (prefetching past the row's end is harmless)
  typename V::T acc[MR][A];
  for (int m = 0; m < MR; ++m)
    for (int a = 0; a < A; ++a) acc[m][a] = V::zero();
  const int64_t KA = K / (L * A) * (L * A), KL = K / L * L;
  for (int64_t k = 0; k < KA; k += L * A) {
    for (int a = 0; a < A; ++a) {
      if constexpr (ROW_PREFETCH)
        if ((L * a * sizeof(W)) % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(w + k + AHEAD + L * a), _MM_HINT_T0);
      const typename V::T wv = V::load(w + k + L * a);
      for (int m = 0; m < MR; ++m) acc[m][a] = V::fmadd(wv, V::load(x + m * K + k + L * a), acc[m][a]);
    }
  }
  for (int64_t k = KA; k < KL; k += L) {
    const typename V::T wv = V::load(w + k);
    for (int m = 0; m < MR; ++m) acc[m][0] = V::fmadd(wv, V::load(x + m * K + k), acc[m][0]);
  }
  for (int m = 0; m < MR; ++m) {
    typename V::T t = acc[m][0];
    for (int a = 1; a < A; ++a) t = V::add(t, acc[m][a]);
    float s = V::sum(t);
    for (int64_t k = KL; k < K; ++k) s += static_cast<float>(w[k]) * x[m * K + k];
    y[m * ldy] = s;
  }
}

// Prompt-sized products (gemm, below) where they were measured to beat ATen's GEMM, whose MKL sgemm takes a
// slow generic path on AMD CPUs: in 512-bit vectors on Zen 5 (the 512-bit build, LMFORGE_ZMM = 1), at any
// number of rows; in 256-bit vectors on other AMD CPUs (LMFORGE_PROMPT256, set by build.py), up to
// PROMPT_MAX_ROWS rows, past which MKL's packed GEMM caught up (Zen 2: 0.97-4.7x ATen's speed at 8 to 384
// rows, 0.84-1.01x at 1,024; benchmarks/RESULTS.md). ATen's elsewhere.
#if defined(__AVX512F__) && defined(LMFORGE_ZMM) && LMFORGE_ZMM == 1 && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define LMFORGE_PROMPT_BITS 512
#elif defined(LMFORGE_PROMPT256) && LMFORGE_PROMPT256
#define LMFORGE_PROMPT_BITS 256
#else
#define LMFORGE_PROMPT_BITS 0
#endif
constexpr bool PROMPT_KERNEL = LMFORGE_PROMPT_BITS > 0;
// The 256-bit kernel's limits: for whole weights (dense_linear) and for quant_linear.cpp's dequantized
// panels of 256 weight rows, which it multiplied at 1.03x ATen's speed at 192 rows and 0.93x at 256
// (SmolLM2 Q4_1 at act-bits 32, TTFT).
constexpr int64_t PROMPT_MAX_ROWS = LMFORGE_PROMPT_BITS == 512 ? INT64_MAX : 384;
constexpr int64_t PROMPT_PANEL_MAX_ROWS = LMFORGE_PROMPT_BITS == 512 ? INT64_MAX : 192;

// Whether gemm takes a product of M activation rows (else ATen's GEMM), with a whole weight or with
// dequantized panels.
inline bool prompt_kernel_takes(int64_t M, bool panels = false) {
  return PROMPT_KERNEL && M <= (panels ? PROMPT_PANEL_MAX_ROWS : PROMPT_MAX_ROWS);
}

#if LMFORGE_PROMPT_BITS == 512
// 16 lanes: R x MR = 24 accumulators, R weight vectors and one of x in the 32 registers. On Zen 5 gemm
// reaches 240-340 GFLOP/s (2 threads) where ATen's MKL sgemm reaches 107-220.
struct Vec : Lanes16 {
  static constexpr int R = 4, MR = 6;
};
#elif LMFORGE_PROMPT_BITS == 256
// 8 lanes: R x MR = 12 accumulators, 3 weight vectors and one of x fill the 16 registers: per 8 columns
// 12 FMAs (6 cycles at two a cycle) against 7 loads. On Zen 2 gemm reaches 120-143 GFLOP/s at 32 rows
// (2 threads) where ATen's reaches 40-90; 2 x 6 and 4 x 2 / 4 x 3 tiles measured 5-20% slower.
struct Vec : Lanes8 {
  static constexpr int R = 3, MR = 4;
};
#endif

#if LMFORGE_PROMPT_BITS
// y [MR, R] (row stride ldy) = x [MR, K] @ w [R, K].T: R x MR accumulators of Vec::L lanes along k in
// registers, then one sum each. The caller runs each tile of R weight rows against every block of MR rows
// of x, so that the R rows stay in L1/L2 while the blocks pass.
template <int R, int MR, typename W>
inline void gemm_tile(const W* w, int64_t K, const float* x, float* y, int64_t ldy) {
  typename Vec::T acc[R][MR];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 8") for (int m = 0; m < MR; ++m) acc[r][m] = Vec::zero();
  const int64_t KL = K / Vec::L * Vec::L;
  for (int64_t k = 0; k < KL; k += Vec::L) {
    typename Vec::T wv[R];
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) wv[r] = Vec::load(w + r * K + k);
    _Pragma("GCC unroll 8") for (int m = 0; m < MR; ++m) {
      const typename Vec::T xv = Vec::load(x + m * K + k);
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) acc[r][m] = Vec::fmadd(wv[r], xv, acc[r][m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MR; ++m) {
      float s = Vec::sum(acc[r][m]);
      for (int64_t k = KL; k < K; ++k) s += static_cast<float>(w[r * K + k]) * x[m * K + k];
      y[m * ldy + r] = s;
    }
}

// R weight rows from n0 (or the rows left at the end, one at a time) against MR rows of x.
template <int R, int MR, typename W>
void gemm_rows(const W* w, const float* x, float* y, int64_t n0, int64_t N, int64_t K, int64_t ldy) {
  if (n0 + R <= N) return gemm_tile<R, MR>(w + n0 * K, K, x, y + n0, ldy);
  for (int64_t n = n0; n < N; ++n) gemm_tile<1, MR>(w + n * K, K, x, y + n, ldy);
}

// gemm_rows for a block of mr <= Vec::MR rows of x
template <int MR = Vec::MR, typename W>
void gemm_block(const W* w, const float* x, float* y, int64_t mr, int64_t n0, int64_t N, int64_t K, int64_t ldy) {
  if constexpr (MR > 1) {
    if (mr < MR) return gemm_block<MR - 1>(w, x, y, mr, n0, N, K, ldy);
  }
  gemm_rows<Vec::R, MR>(w, x, y, n0, N, K, ldy);
}

// y [M, N] (row stride ldy) = x [M, K] @ w [N, K].T: tiles of R weight rows over the threads, each
// against every block of MR rows of x, in chunks of rows of x small enough (X_CHUNK_BYTES) to stay in
// L2 while the whole weight passes, but of at least X_CHUNK_MIN_ROWS, so that wide weights are not read
// again for every few rows. (Zen 5's L2 is 1 MiB a core: 1 MiB chunks took 1.2-1.4x the time of
// 256 KiB ones for the default model's head at 256 to 1,024 rows; with K = 5,632, 6-row chunks lost to
// ATen at 2,048 rows. On Zen 2, 512 KiB of L2 a core, 64-128 KiB chunks lost up to 40% at K = 5,632,
// 512 KiB-1 MiB ones were no faster.)
constexpr int64_t X_CHUNK_BYTES = 1 << 18, X_CHUNK_MIN_ROWS = 48;

template <typename W>
void gemm(const W* w, const float* x, float* y, int64_t M, int64_t N, int64_t K, int64_t ldy) {
  constexpr int R = Vec::R, MR = Vec::MR;
  const int64_t chunk = std::max<int64_t>(X_CHUNK_MIN_ROWS, X_CHUNK_BYTES / (K * 4) / MR * MR);
  for (int64_t c0 = 0; c0 < M; c0 += chunk) {
    const int64_t c1 = std::min(M, c0 + chunk);
    at::parallel_for(0, (N + R - 1) / R, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t m0 = c0; m0 < c1; m0 += MR)
          gemm_block(w, x + m0 * K, y + m0 * ldy, std::min<int64_t>(MR, c1 - m0), t * R, N, K, ldy);
    });
  }
}
#endif

// y [D] = w * x / sqrt(mean(x^2) + eps) (Llama's RMSNorm of one row, fp32).
inline void rms_norm_row(const float* x, const float* w, int64_t D, float eps, float* y) {
  const int64_t D8 = D / 8 * 8;
  __m256 acc = _mm256_setzero_ps();
  for (int64_t k = 0; k < D8; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(x + k), acc);
  float ss = hsum(acc);
  for (int64_t k = D8; k < D; ++k) ss += x[k] * x[k];
  const float inv = 1.f / std::sqrt(ss / static_cast<float>(D) + eps);
  for (int64_t k = 0; k < D; ++k) y[k] = w[k] * (x[k] * inv);
}

// o [n] = silu(g) * u for one row: g, u [n] (a gated MLP's two halves).
inline void silu_mul_row(const float* g, const float* u, int64_t n, float* o) {
  const int64_t n8 = n / 8 * 8;
  for (int64_t k = 0; k < n8; k += 8) {
    const __m256 gv = _mm256_loadu_ps(g + k);
    const __m256 e = lmforge_simd::exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
    const __m256 sig = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(_mm256_set1_ps(1.f), e));
    _mm256_storeu_ps(o + k, _mm256_mul_ps(_mm256_mul_ps(gv, sig), _mm256_loadu_ps(u + k)));
  }
  for (int64_t k = n8; k < n; ++k) o[k] = g[k] / (1.f + std::exp(-g[k])) * u[k];
}

}  // namespace lmforge_dense
