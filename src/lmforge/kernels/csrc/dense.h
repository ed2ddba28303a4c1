// The tile of dense_linear.cpp (one weight row x MR activation rows, fp32 accumulation), shared with
// decode_step.cpp.
#pragma once

#include <immintrin.h>

#include "simd.h"

#include <cmath>
#include <cstdint>

namespace lmforge_dense {

using lmforge_simd::hsum;
using lmforge_simd::load8;

// y[m * ldy] = dot(w, x row m) for one weight row and MR activation rows. One row at a time, read
// front to back with no software prefetch, streams as fast as a plain sum over the weights (17-19
// GB/s here), where 4 rows side by side with prefetching reached 12-14 GB/s (a standalone harness
// over a 230 MB matrix, benchmarks/RESULTS.md). The products are spread over A accumulators per
// activation row along k, so that the FMA latency never limits the stream.
template <int MR, typename W>
inline void dot_row(const W* w, int64_t K, const float* x, float* y, int64_t ldy) {
  constexpr int A = MR == 1 ? 4 : 2;
  __m256 acc[MR][A];
  for (int m = 0; m < MR; ++m)
    for (int a = 0; a < A; ++a) acc[m][a] = _mm256_setzero_ps();
  const int64_t KA = K / (8 * A) * (8 * A), K8 = K / 8 * 8;
  for (int64_t k = 0; k < KA; k += 8 * A) {
    for (int a = 0; a < A; ++a) {
      const __m256 wv = load8(w + k + 8 * a);
      for (int m = 0; m < MR; ++m) acc[m][a] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * K + k + 8 * a), acc[m][a]);
    }
  }
  for (int64_t k = KA; k < K8; k += 8) {
    const __m256 wv = load8(w + k);
    for (int m = 0; m < MR; ++m) acc[m][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * K + k), acc[m][0]);
  }
  for (int m = 0; m < MR; ++m) {
    __m256 t = acc[m][0];
    for (int a = 1; a < A; ++a) t = _mm256_add_ps(t, acc[m][a]);
    float s = hsum(t);
    for (int64_t k = K8; k < K; ++k) s += static_cast<float>(w[k]) * x[m * K + k];
    y[m * ldy] = s;
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
