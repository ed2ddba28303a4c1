// The pieces of attention.cpp's decode attention, shared with decode_step.cpp: the rotation of one head
// (rope), one query head's softmax attention over the cached keys and values, and the same split in
// parts over the slots for a group of query heads (attend_part, merge_parts). The cache holds fp32 or
// fp16 values (T = float or c10::Half, widened in registers; store_row writes a row in either).
#pragma once

#include <immintrin.h>

#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

namespace lmforge_attn {

using lmforge_simd::hsum;
using lmforge_simd::load8;
using lmforge_simd::to_float;

template <typename T>
inline float dot(const float* a, const T* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), acc);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * to_float(b[i]);
  return s;
}

template <typename T>
inline void axpy(float p, const T* x, float* y, int64_t n) {  // y += p * x
  const __m256 pv = _mm256_set1_ps(p);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(pv, load8(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += p * to_float(x[i]);
}

// dst [n] = src, rounded to fp16 for an fp16 cache (round to nearest even, as torch's conversion)
inline void store_row(const float* src, float* dst, int64_t n) { std::copy(src, src + n, dst); }
inline void store_row(const float* src, c10::Half* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = c10::Half(src[i]);
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
template <typename T>
inline __m256 scores8(const float* q, const T* kb, int64_t hd) {
  __m256 a[8];
  for (int l = 0; l < 8; ++l) a[l] = _mm256_setzero_ps();
  for (int64_t i = 0; i < hd; i += 8) {
    const __m256 qv = _mm256_loadu_ps(q + i);
    for (int l = 0; l < 8; ++l) a[l] = _mm256_fmadd_ps(qv, load8(kb + l * hd + i), a[l]);
  }
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  // u0 = [k0..k3 sums of channels 0-3 of every 8 | the same of channels 4-7], u1 likewise for k4..k7
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// out_g [C * 8] (out + g * ostride) += sum over l < L of p_g[l] v_l (p_g = p + g * pstride) for GB
// heads, each value vector widened once for all of them; slots where every p_g is 0 are skipped.
template <int GB, int C, typename T>
inline void weighted_sums_heads(const float* p, int64_t pstride, const T* vb, int64_t L, int64_t hd, float* out,
                                int64_t ostride) {
  __m256 acc[GB][C];
  for (int g = 0; g < GB; ++g)
    for (int c = 0; c < C; ++c) acc[g][c] = _mm256_loadu_ps(out + g * ostride + 8 * c);
  for (int64_t l = 0; l < L; ++l) {
    bool any = false;
    for (int g = 0; g < GB; ++g) any |= p[g * pstride + l] != 0.f;
    if (!any) continue;  // masked slots
    __m256 pv[GB];
    for (int g = 0; g < GB; ++g) pv[g] = _mm256_set1_ps(p[g * pstride + l]);
    for (int c = 0; c < C; ++c) {
      const __m256 v = load8(vb + l * hd + 8 * c);
      for (int g = 0; g < GB; ++g) acc[g][c] = _mm256_fmadd_ps(pv[g], v, acc[g][c]);
    }
  }
  for (int g = 0; g < GB; ++g)
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(out + g * ostride + 8 * c, acc[g][c]);
}

#if defined(__AVX512F__) && defined(LMFORGE_ZMM) && LMFORGE_ZMM == 1
// Where 512-bit instructions run at full width (LMFORGE_ZMM = 1, Zen 5), head sizes that are a multiple
// of 16 score and sum in 512-bit vectors, and the query heads of a group share each widened key vector
// (two heads at a time; three, with 24 accumulators, measured slower) and each widened value vector
// (attend_part).
#define LMFORGE_ATTN512 1
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }

// [x0 + x1, x2 + x3, y0 + y1, y2 + y3] in every 128-bit block (hadd, 512 bits wide)
inline __m512 pair_add(__m512 x, __m512 y) {
  return _mm512_add_ps(_mm512_shuffle_ps(x, y, 0x88), _mm512_shuffle_ps(x, y, 0xDD));
}

// lane l = the sum of a[l]'s 16 lanes
inline __m256 reduce8_512(const __m512 (&a)[8]) {
  __m512 c[4];  // c_l: key l's 16 lanes folded to 8 in the low half, key l + 4's in the high half
  for (int l = 0; l < 4; ++l)
    c[l] = _mm512_add_ps(_mm512_shuffle_f32x4(a[l], a[l + 4], 0x44), _mm512_shuffle_f32x4(a[l], a[l + 4], 0xEE));
  // e: 128-bit blocks 0 and 1 hold halves of keys 0..3's sums, blocks 2 and 3 of keys 4..7's
  const __m512 e = pair_add(pair_add(c[0], c[1]), pair_add(c[2], c[3]));
  const __m512 f = _mm512_add_ps(e, _mm512_shuffle_f32x4(e, e, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps256(_mm512_shuffle_f32x4(f, f, _MM_SHUFFLE(2, 0, 2, 0)));
}

// scores8 in 512-bit vectors (hd a multiple of 16): lane l of the result = q . k_l.
template <typename T>
inline __m256 scores8_512(const float* q, const T* kb, int64_t hd) {
  __m512 a[8];
  for (int l = 0; l < 8; ++l) a[l] = _mm512_setzero_ps();
  for (int64_t i = 0; i < hd; i += 16) {
    const __m512 qv = _mm512_loadu_ps(q + i);
    for (int l = 0; l < 8; ++l) a[l] = _mm512_fmadd_ps(qv, load16(kb + l * hd + i), a[l]);
  }
  return reduce8_512(a);
}

// scores8_512 of two query heads at once, each key vector widened once for both.
template <typename T>
inline void scores8x2_512(const float* q0, const float* q1, const T* kb, int64_t hd, __m256& s0, __m256& s1) {
  __m512 a[8], b[8];
  for (int l = 0; l < 8; ++l) a[l] = b[l] = _mm512_setzero_ps();
  for (int64_t i = 0; i < hd; i += 16) {
    const __m512 qa = _mm512_loadu_ps(q0 + i), qb = _mm512_loadu_ps(q1 + i);
    for (int l = 0; l < 8; ++l) {
      const __m512 k = load16(kb + l * hd + i);
      a[l] = _mm512_fmadd_ps(qa, k, a[l]);
      b[l] = _mm512_fmadd_ps(qb, k, b[l]);
    }
  }
  s0 = reduce8_512(a);
  s1 = reduce8_512(b);
}

// out_g [C * 16] (out + g * ostride) = sum over l < L of p_g[l] v_l (p_g = p + g * pstride) for GB
// heads, each value vector widened once for all of them; slots where every p_g is 0 are skipped.
template <int GB, int C, typename T>
inline void weighted_sums512(const float* p, int64_t pstride, const T* vb, int64_t L, int64_t hd, float* out,
                             int64_t ostride) {
  __m512 acc[GB][C];
  for (int g = 0; g < GB; ++g)
    for (int c = 0; c < C; ++c) acc[g][c] = _mm512_setzero_ps();
  for (int64_t l = 0; l < L; ++l) {
    bool any = false;
    for (int g = 0; g < GB; ++g) any |= p[g * pstride + l] != 0.f;
    if (!any) continue;  // masked slots
    __m512 v[C];
    for (int c = 0; c < C; ++c) v[c] = load16(vb + l * hd + 16 * c);
    for (int g = 0; g < GB; ++g) {
      const __m512 pv = _mm512_set1_ps(p[g * pstride + l]);
      for (int c = 0; c < C; ++c) acc[g][c] = _mm512_fmadd_ps(pv, v[c], acc[g][c]);
    }
  }
  for (int g = 0; g < GB; ++g)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + g * ostride + 16 * c, acc[g][c]);
}

template <int GB, typename T>
inline void weighted_sums512_heads(const float* p, int64_t pstride, const T* vb, int64_t L, int64_t hd, float* out,
                                   int64_t ostride) {
  for (int64_t c0 = 0; c0 < hd; c0 += 64) {  // 64 channels (4 registers per head) at a time
    switch (std::min<int64_t>(4, (hd - c0) / 16)) {
      case 4: weighted_sums512<GB, 4>(p, pstride, vb + c0, L, hd, out + c0, ostride); break;
      case 3: weighted_sums512<GB, 3>(p, pstride, vb + c0, L, hd, out + c0, ostride); break;
      case 2: weighted_sums512<GB, 2>(p, pstride, vb + c0, L, hd, out + c0, ostride); break;
      default: weighted_sums512<GB, 1>(p, pstride, vb + c0, L, hd, out + c0, ostride); break;
    }
  }
}

// The value sums of G heads (hd a multiple of 16), up to 4 heads at a time.
template <typename T>
inline void weighted_sums512_group(const float* p, int64_t pstride, int64_t G, const T* vb, int64_t L, int64_t hd,
                                   float* out, int64_t ostride) {
  for (int64_t g0 = 0; g0 < G;) {
    const int64_t left = G - g0, gb = left == 5 ? 3 : std::min<int64_t>(4, left);  // 5 = 3 + 2, not 4 + 1
    const float* pg = p + g0 * pstride;
    float* og = out + g0 * ostride;
    switch (gb) {
      case 4: weighted_sums512_heads<4>(pg, pstride, vb, L, hd, og, ostride); break;
      case 3: weighted_sums512_heads<3>(pg, pstride, vb, L, hd, og, ostride); break;
      case 2: weighted_sums512_heads<2>(pg, pstride, vb, L, hd, og, ostride); break;
      default: weighted_sums512_heads<1>(pg, pstride, vb, L, hd, og, ostride); break;
    }
    g0 += gb;
  }
}
#endif

// 256-bit builds: the query heads of a group (2 or 3 at a time) share each widened key and value
// vector (scores4_heads, weighted_sums_heads), and their accumulators make 8-12 independent FMA chains
// per loaded vector, where one head at a time widened every vector for each head. Each sum is added in
// the same order as by scores8 and by the one-head value sums, so the results are the same to the bit.
// A/B harness on Zen 2 (3 heads, head size 64, 32 slots): 0.69x the time with the cache in L2, ~0.9x
// from memory; in the decode step at 540 slots (5 alternated pairs) attention went 1.10-1.17 -> 1.05-1.06
// ms at batch 1, 3.99-4.19 -> 3.69-3.85 ms at batch 4.

// Scores of 4 keys kb [4, hd] for GB heads q [GB, hd] (hd a multiple of 8): lane l of s[g] = q_g . k_l.
template <int GB, typename T>
inline void scores4_heads(const float* q, int64_t hd, const T* kb, __m128* s) {
  __m256 a[GB][4];
  for (int g = 0; g < GB; ++g)
    for (int l = 0; l < 4; ++l) a[g][l] = _mm256_setzero_ps();
  for (int64_t i = 0; i < hd; i += 8) {
    __m256 qv[GB];
    for (int g = 0; g < GB; ++g) qv[g] = _mm256_loadu_ps(q + g * hd + i);
    for (int l = 0; l < 4; ++l) {
      const __m256 k = load8(kb + l * hd + i);
      for (int g = 0; g < GB; ++g) a[g][l] = _mm256_fmadd_ps(qv[g], k, a[g][l]);
    }
  }
  for (int g = 0; g < GB; ++g) {  // [k0 .. k3 sums of lanes 0-3 | the same of lanes 4-7]
    const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a[g][0], a[g][1]), _mm256_hadd_ps(a[g][2], a[g][3]));
    s[g] = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
  }
}

// weighted_sums_heads over the last `left` (< C + 1) chunks of 8 channels.
template <int GB, int C, typename T>
inline void weighted_sums_left(const float* p, int64_t pstride, const T* vb, int64_t L, int64_t hd, float* out,
                               int64_t ostride, int64_t left) {
  if constexpr (C > 0) {
    if (left == C) {
      weighted_sums_heads<GB, C>(p, pstride, vb, L, hd, out, ostride);
    } else {
      weighted_sums_left<GB, C - 1>(p, pstride, vb, L, hd, out, ostride, left);
    }
  }
}

// The value sums of GB heads over all channels (hd a multiple of 8): one head 64 channels (8
// accumulators) a pass, two or three heads 32 channels, then the channels left.
template <int GB, int C = (GB == 1 ? 8 : 4), typename T>
inline void weighted_sums_heads_all(const float* p, int64_t pstride, const T* vb, int64_t L, int64_t hd, float* out,
                                    int64_t ostride) {
  int64_t c0 = 0;
  for (; c0 + 8 * C <= hd; c0 += 8 * C) weighted_sums_heads<GB, C>(p, pstride, vb + c0, L, hd, out + c0, ostride);
  weighted_sums_left<GB, C - 1>(p, pstride, vb + c0, L, hd, out + c0, ostride, (hd - c0) / 8);
}

// out [hd] += sum over l < L of p_l v_l (vb [L, hd]), skipping the slots with p_l = 0.
template <typename T>
inline void add_weighted(const float* p, const T* vb, int64_t L, int64_t hd, float* out) {
  if (hd % 8) {
    for (int64_t l = 0; l < L; ++l) {
      if (p[l] != 0.f) axpy(p[l], vb + l * hd, out, hd);
    }
    return;
  }
  weighted_sums_heads_all<1>(p, 0, vb, L, hd, out, 0);
}

// p [n] = e^(p - max) over the visible slots (mask[l * mstride]), 0 elsewhere; returns {max, sum},
// {-inf, 0} (and p all 0) when no slot is visible.
inline std::pair<float, float> softmax_unnormalized(float* p, const bool* mask, int64_t mstride, int64_t n) {
  constexpr float NEG_INF = -std::numeric_limits<float>::infinity();
  float mx = NEG_INF;
  int64_t l = 0;
  if (mstride == 1) {  // 8 slots at a time: their mask bytes widened to lanes
    const __m256 ninf = _mm256_set1_ps(NEG_INF);
    __m256 mv = ninf;
    for (; l + 8 <= n; l += 8) {
      int64_t bytes;
      std::memcpy(&bytes, mask + l, 8);
      const __m256i lanes = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes));
      const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lanes, _mm256_setzero_si256()));
      const __m256 v = _mm256_blendv_ps(ninf, _mm256_loadu_ps(p + l), keep);
      _mm256_storeu_ps(p + l, v);
      mv = _mm256_max_ps(mv, v);
    }
    mx = lmforge_simd::hmax(mv);
  }
  for (; l < n; ++l) {
    if (!mask[l * mstride]) p[l] = NEG_INF;
    mx = std::max(mx, p[l]);
  }
  if (mx == NEG_INF) {
    std::fill(p, p + n, 0.f);
    return {NEG_INF, 0.f};
  }
  l = 0;
  const __m256 mxv = _mm256_set1_ps(mx);
  __m256 tv = _mm256_setzero_ps();
  for (; l + 8 <= n; l += 8) {  // masked slots hold -inf: e^-inf clamps to ~1e-38, then zeroed
    const __m256 s = _mm256_loadu_ps(p + l);
    __m256 e = lmforge_simd::exp8(_mm256_sub_ps(s, mxv));
    e = _mm256_and_ps(e, _mm256_cmp_ps(s, _mm256_set1_ps(NEG_INF), _CMP_NEQ_OQ));
    _mm256_storeu_ps(p + l, e);
    tv = _mm256_add_ps(tv, e);
  }
  float total = hsum(tv);
  for (; l < n; ++l) {
    p[l] = std::exp(p[l] - mx);
    total += p[l];
  }
  return {mx, total};
}

// Attention over L slots is done in parts of PART slots, each part's softmax and value sum on its own,
// then merged (as flash-decoding does). The parts' bounds depend on L only, so that every caller (the
// single op, the decode step with any number of threads) gets the same numbers; and the decode step
// can spread the parts of one head over its threads.
constexpr int64_t PART = 32;
inline int64_t part_count(int64_t L) { return std::max<int64_t>(1, (L + PART - 1) / PART); }

// One part of the attention of G query heads q [G, hd] that share a key/value head (grouped-query
// attention), over the slots [l0, l1) of kb / vb [L, hd]: part + g * step gets head g's max score m,
// the sum s of e^(score - m) and o [hd] = the sum of e^(score - m) v, unnormalized: [m, s, o] (see
// merge_parts).
// The keys and values are read from memory once for all G heads (a part of PART slots stays in L1).
// p: scratch of G * (l1 - l0) floats.
template <typename T>
inline void attend_part(const float* q, int64_t G, const T* kb, const T* vb, const bool* mask,
                        int64_t mstride, int64_t l0, int64_t l1, int64_t hd, float scale, float* part, int64_t step,
                        float* p) {
  const int64_t n = l1 - l0;
  kb += l0 * hd;
  vb += l0 * hd;
  mask += l0 * mstride;
  int64_t l = 0;
  if (hd % 8 == 0) {
    const __m256 sv = _mm256_set1_ps(scale);
    for (; l + 8 <= n; l += 8) {
      // the cache comes from DRAM (the weights pass through L3 every step)
#ifdef LMFORGE_ATTN512
      // the keys and values of the next part (of the same key/value head, which a thread usually
      // takes next; past the cache's end a prefetch is dropped)
      const char* kf = reinterpret_cast<const char*>(kb + (l + PART) * hd);
      const char* vf = reinterpret_cast<const char*>(vb + (l + PART) * hd);
      for (int64_t off = 0; off < 8 * hd * static_cast<int64_t>(sizeof(T)); off += 64) {
        _mm_prefetch(kf + off, _MM_HINT_T0);
        _mm_prefetch(vf + off, _MM_HINT_T0);
      }
      if (hd % 16 == 0) {
        int64_t g = 0;
        for (; g + 2 <= G; g += 2) {
          __m256 s0, s1;
          scores8x2_512(q + g * hd, q + (g + 1) * hd, kb + l * hd, hd, s0, s1);
          _mm256_storeu_ps(p + g * n + l, _mm256_mul_ps(s0, sv));
          _mm256_storeu_ps(p + (g + 1) * n + l, _mm256_mul_ps(s1, sv));
        }
        if (g < G) _mm256_storeu_ps(p + g * n + l, _mm256_mul_ps(scores8_512(q + g * hd, kb + l * hd, hd), sv));
        continue;
      }
#else
      // the keys two blocks ahead, past the part's end too (into the next part of the same head, which
      // a thread usually takes next: at 540 slots, Zen 2, attention 1.07-1.09 -> 0.89-0.96 ms at batch 1,
      // 3.79-3.89 -> 3.47-3.57 at batch 4, against stopping at the part's last slot; past the cache's end
      // a prefetch is dropped), and these slots' values, which the weighted sum reads after the softmax
      // (the 512-bit build's distance, a whole part, measured slower here and on Zen 5's 256-bit build)
      const char* kf = reinterpret_cast<const char*>(kb + (l + 16) * hd);
      const char* vf = reinterpret_cast<const char*>(vb + l * hd);
      for (int64_t off = 0; off < 8 * hd * static_cast<int64_t>(sizeof(T)); off += 64) {
        _mm_prefetch(kf + off, _MM_HINT_T0);
        _mm_prefetch(vf + off, _MM_HINT_T1);
      }
#endif
#ifdef LMFORGE_ATTN512
      for (int64_t g = 0; g < G; ++g) _mm256_storeu_ps(p + g * n + l, _mm256_mul_ps(scores8(q + g * hd, kb + l * hd, hd), sv));
#else
      for (int64_t g0 = 0; g0 < G; g0 += 3) {  // the heads 3 at a time, 4 keys at a time (one: 8 keys)
        const int64_t gb = std::min<int64_t>(3, G - g0);
        if (gb == 1) {
          _mm256_storeu_ps(p + g0 * n + l, _mm256_mul_ps(scores8(q + g0 * hd, kb + l * hd, hd), sv));
          continue;
        }
        for (int64_t k4 = l; k4 < l + 8; k4 += 4) {
          __m128 s3[3];
          if (gb == 3) {
            scores4_heads<3>(q + g0 * hd, hd, kb + k4 * hd, s3);
          } else {
            scores4_heads<2>(q + g0 * hd, hd, kb + k4 * hd, s3);
          }
          for (int64_t g = 0; g < gb; ++g)
            _mm_storeu_ps(p + (g0 + g) * n + k4, _mm_mul_ps(s3[g], _mm256_castps256_ps128(sv)));
        }
      }
#endif
    }
  }
  for (; l < n; ++l)
    for (int64_t g = 0; g < G; ++g) p[g * n + l] = dot(q + g * hd, kb + l * hd, hd) * scale;
#ifdef LMFORGE_ATTN512
  const bool sums512 = hd % 16 == 0;  // weighted_sums512_group writes the sums whole
#else
  constexpr bool sums512 = false;
#endif
  for (int64_t g = 0; g < G; ++g) {
    const auto ms = softmax_unnormalized(p + g * n, mask, mstride, n);
    float* pg = part + g * step;
    pg[0] = ms.first;
    pg[1] = ms.second;
    if (!sums512) std::fill(pg + 2, pg + 2 + hd, 0.f);
  }
#ifdef LMFORGE_ATTN512
  if (sums512) {
    weighted_sums512_group(p, n, G, vb, n, hd, part + 2, step);
    return;
  }
#endif
  for (int64_t g0 = 0; g0 < G;) {  // the heads 3 at a time, sharing each widened value vector (one alone)
    const int64_t gb = hd % 8 ? 1 : std::min<int64_t>(3, G - g0);
    float* og = part + g0 * step + 2;
    if (gb == 3) {
      weighted_sums_heads_all<3>(p + g0 * n, n, vb, n, hd, og, step);
    } else if (gb == 2) {
      weighted_sums_heads_all<2>(p + g0 * n, n, vb, n, hd, og, step);
    } else {
      add_weighted(p + g0 * n, vb, n, hd, og);
    }
    g0 += gb;
  }
}

// out [hd] = the attention of one query head from its C parts (stride hd + 2, see attend_part): the
// parts' sums rescaled to the largest max; zeros when no slot was visible.
inline void merge_parts(const float* parts, int64_t C, int64_t hd, float* out) {
  constexpr float NEG_INF = -std::numeric_limits<float>::infinity();
  const int64_t stride = hd + 2;
  float mx = NEG_INF;
  for (int64_t c = 0; c < C; ++c) mx = std::max(mx, parts[c * stride]);
  std::fill(out, out + hd, 0.f);
  if (mx == NEG_INF) return;
  float total = 0.f;
  for (int64_t c = 0; c < C; ++c) {
    const float* pc = parts + c * stride;
    if (pc[0] == NEG_INF) continue;
    const float w = std::exp(pc[0] - mx);
    total += w * pc[1];
    axpy(w, pc + 2, out, hd);
  }
  const float inv = 1.f / total;
  for (int64_t i = 0; i < hd; ++i) out[i] *= inv;
}

// The scratch floats that attend needs for L slots.
inline int64_t attend_scratch(int64_t L, int64_t hd) { return PART + part_count(L) * (hd + 2); }

// out [hd] = softmax(q . k_l * scale over the slots l < L with mask[l * mstride]) weighted sum of v_l,
// for keys kb and values vb [L, hd]; zeros when no slot is visible. scratch: attend_scratch(L, hd) floats.
template <typename T>
inline void attend(const float* q, const T* kb, const T* vb, const bool* mask, int64_t mstride, int64_t L,
                   int64_t hd, float scale, float* out, float* scratch) {
  const int64_t C = part_count(L), stride = hd + 2;
  float* parts = scratch + PART;
  for (int64_t c = 0; c < C; ++c)
    attend_part(q, 1, kb, vb, mask, mstride, c * PART, std::min(L, (c + 1) * PART), hd, scale, parts + c * stride, 0, scratch);
  merge_parts(parts, C, hd, out);
}

}  // namespace lmforge_attn
