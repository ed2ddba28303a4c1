// The pieces of attention.cpp's decode attention, shared with decode_step.cpp: the rotation of one head
// (rope) and one query head's softmax attention over the cached keys and values.
#pragma once

#include <immintrin.h>

#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace lmforge_attn {

using lmforge_simd::hsum;

inline float dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float p, const float* x, float* y, int64_t n) {  // y += p * x
  const __m256 pv = _mm256_set1_ps(p);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(pv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += p * x[i];
}

// dst = src rotated: channel i < rd becomes src[i] * cos[i] + src[partner(i)] * sin[i]; the rest is
// copied. With rd = 0 (no rope) a plain copy.
inline void rotate(const float* src, float* dst, const float* cs, const float* sn, int64_t rd, int64_t hd,
                   bool interleaved) {
  const int64_t half = rd / 2;
  for (int64_t i = 0; i < rd; ++i) {
    const int64_t partner = interleaved ? (i ^ 1) : (i < half ? i + half : i - half);
    dst[i] = src[i] * cs[i] + src[partner] * sn[i];
  }
  std::copy(src + rd, src + hd, dst + rd);
}

// Scores of 8 keys at once: q . k_l for l = 0..7 (keys kb [8, hd], hd a multiple of 8), one accumulator
// per key so that the 8 dependency chains overlap, then reduced into one vector (lane l = key l).
inline __m256 scores8(const float* q, const float* kb, int64_t hd) {
  __m256 a[8];
  for (int l = 0; l < 8; ++l) a[l] = _mm256_setzero_ps();
  for (int64_t i = 0; i < hd; i += 8) {
    const __m256 qv = _mm256_loadu_ps(q + i);
    for (int l = 0; l < 8; ++l) a[l] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kb + l * hd + i), a[l]);
  }
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  // u0 = [k0..k3 sums of channels 0-3 of every 8 | the same of channels 4-7], u1 likewise for k4..k7
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// out [C * 8] += p_l * v_l over the keys with p_l != 0, with the C accumulators in registers.
template <int C>
inline void weighted_sum(const float* p, const float* vb, int64_t L, int64_t hd, float* out) {
  __m256 acc[C];
  for (int c = 0; c < C; ++c) acc[c] = _mm256_loadu_ps(out + 8 * c);
  for (int64_t l = 0; l < L; ++l) {
    if (p[l] == 0.f) continue;  // masked slots
    const __m256 pv = _mm256_set1_ps(p[l]);
    for (int c = 0; c < C; ++c) acc[c] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vb + l * hd + 8 * c), acc[c]);
  }
  for (int c = 0; c < C; ++c) _mm256_storeu_ps(out + 8 * c, acc[c]);
}

// out [hd] = softmax(q . k_l * scale over the slots l < L with mask[l * mstride]) weighted sum of v_l,
// for keys kb and values vb [L, hd]; zeros when no slot is visible. p: scratch of L floats.
inline void attend(const float* q, const float* kb, const float* vb, const bool* mask, int64_t mstride, int64_t L,
                   int64_t hd, float scale, float* out, float* p) {
  constexpr float NEG_INF = -std::numeric_limits<float>::infinity();
  const bool vec = hd % 8 == 0;
  int64_t l = 0;
  if (vec) {
    const __m256 sv = _mm256_set1_ps(scale);
    for (; l + 8 <= L; l += 8) _mm256_storeu_ps(p + l, _mm256_mul_ps(scores8(q, kb + l * hd, hd), sv));
  }
  for (; l < L; ++l) p[l] = dot(q, kb + l * hd, hd) * scale;
  float mx = NEG_INF;
  for (l = 0; l < L; ++l) {
    if (!mask[l * mstride]) p[l] = NEG_INF;
    mx = std::max(mx, p[l]);
  }
  std::fill(out, out + hd, 0.f);
  if (mx == NEG_INF) return;  // nothing to attend to: zeros
  l = 0;
  const __m256 mxv = _mm256_set1_ps(mx);
  __m256 tv = _mm256_setzero_ps();
  for (; l + 8 <= L; l += 8) {  // masked slots hold -inf: e^-inf clamps to ~1e-38, then zeroed
    const __m256 s = _mm256_loadu_ps(p + l);
    __m256 e = lmforge_simd::exp8(_mm256_sub_ps(s, mxv));
    e = _mm256_and_ps(e, _mm256_cmp_ps(s, _mm256_set1_ps(NEG_INF), _CMP_NEQ_OQ));
    _mm256_storeu_ps(p + l, e);
    tv = _mm256_add_ps(tv, e);
  }
  float total = hsum(tv);
  for (; l < L; ++l) {
    p[l] = std::exp(p[l] - mx);
    total += p[l];
  }
  const float inv = 1.f / total;
  for (l = 0; l < L; ++l) p[l] *= inv;
  int64_t c0 = 0;
  if (vec) {  // 64 channels (8 registers) at a time, then the rest
    for (; c0 + 64 <= hd; c0 += 64) weighted_sum<8>(p, vb + c0, L, hd, out + c0);
    switch ((hd - c0) / 8) {
      case 7: weighted_sum<7>(p, vb + c0, L, hd, out + c0); break;
      case 6: weighted_sum<6>(p, vb + c0, L, hd, out + c0); break;
      case 5: weighted_sum<5>(p, vb + c0, L, hd, out + c0); break;
      case 4: weighted_sum<4>(p, vb + c0, L, hd, out + c0); break;
      case 3: weighted_sum<3>(p, vb + c0, L, hd, out + c0); break;
      case 2: weighted_sum<2>(p, vb + c0, L, hd, out + c0); break;
      case 1: weighted_sum<1>(p, vb + c0, L, hd, out + c0); break;
      default: break;
    }
    return;
  }
  for (l = 0; l < L; ++l) {
    if (p[l] != 0.f) axpy(p[l], vb + l * hd, out, hd);
  }
}

}  // namespace lmforge_attn
