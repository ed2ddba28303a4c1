// The tile of dense_linear.cpp (R weight rows x MR activation rows, fp32 accumulation), shared with
// decode_step.cpp.
#pragma once

#include <immintrin.h>

#include "simd.h"

#include <cmath>
#include <cstdint>

namespace lmforge_dense {

using lmforge_simd::hsum;
using lmforge_simd::load8;

constexpr int64_t PREFETCH = 512;  // elements ahead in a weight row

// y[m * ldy + r] = dot(w row r, x row m) for R weight rows and MR activation rows.
template <int R, int MR, typename W>
inline void dot_rows(const W* w, int64_t K, const float* x, float* y, int64_t ldy) {
  __m256 acc[R][MR];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MR; ++m) acc[r][m] = _mm256_setzero_ps();
  const int64_t K8 = K / 8 * 8;
  for (int64_t k = 0; k < K8; k += 8) {
    if (k % 16 == 0)  // one cache line of fp32 weights; the hardware prefetcher falls behind on R rows
      for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k + PREFETCH), _MM_HINT_T0);
    __m256 xv[MR];
    for (int m = 0; m < MR; ++m) xv[m] = _mm256_loadu_ps(x + m * K + k);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = load8(w + r * K + k);
      for (int m = 0; m < MR; ++m) acc[r][m] = _mm256_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int m = 0; m < MR; ++m) {
      float s = hsum(acc[r][m]);
      for (int64_t k = K8; k < K; ++k) s += static_cast<float>(w[r * K + k]) * x[m * K + k];
      y[m * ldy + r] = s;
    }
  }
}

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
