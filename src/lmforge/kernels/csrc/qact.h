// The integer-activation products of quant_act_linear.cpp, shared with decode_step.cpp: rounding a row
// of activations per block of 32 values to int8 codes, the weight decoders, and the tile of R weight
// rows x MR activation rows. See quant_act_linear.cpp for the arithmetic.
#pragma once

#include <immintrin.h>

#include "simd.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

namespace lmforge_qact {

using namespace lmforge_simd;

// Small loops over a tile's rows must be unrolled so that the accumulators stay in registers.
#define UNROLL _Pragma("GCC unroll 16")

// ---------------------------------------------------------------------- activation rounding

// One row of x, rounded per block: a [K] the int8 codes; with two planes also b [K] the int8 codes of
// the rounding error, and c = 254 a + b [K] as int16 (|c| <= 32385), which carries both planes into one
// product; d [K/32] the block scales (divided by 254 with two planes), sums [K/32] the exact fp32 sums
// of the blocks. For grouped weights a and b are interleaved like the weights' groups of 8 blocks (vector i
// of a group, 32 bytes, holds columns 4i .. 4i + 3 of block j in lane j), and c in the order of the
// weights' codes widened to int16: interleave_group512 for the 512-bit products, interleave_group16
// without VNNI (other VNNI builds read no group of c).
struct QRow {
  const int8_t *a, *b;
  const int16_t* c;
  const float *d, *sums;
  const int32_t* csum;  // [K/32] the integer sums of a block's codes: of a, or with two planes of c
  const int32_t* csum_lo;  // [K/32] the same of each block's first 16 codes (half-block scales)
};

// Transposes 8 x 8 32-bit words: r[i] lane j <- r[j] lane i.
inline void transpose8(__m256i (&r)[8]) {
  __m256i t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4)
    for (int k = 0; k < 2; ++k) {
      u[i + k] = _mm256_unpacklo_epi64(t[i + k], t[i + 2 + k]);
      u[i + 2 + k] = _mm256_unpackhi_epi64(t[i + k], t[i + 2 + k]);
    }
  // u[0..3] hold rows 0-3 of columns (0, 4), (2, 6), (1, 5), (3, 7) in their two 128-bit halves; u[4..7] rows 4-7
  const int col[4] = {0, 2, 1, 3};
  for (int k = 0; k < 4; ++k) {
    r[col[k]] = _mm256_permute2x128_si256(u[k], u[4 + k], 0x20);
    r[col[k] + 4] = _mm256_permute2x128_si256(u[k], u[4 + k], 0x31);
  }
}

// A group of 8 blocks' codes (256 bytes) reordered so that 4-byte lane j of vector i holds columns
// 4i .. 4i + 3 of block j: a transpose of 8 x 8 four-byte words.
inline void interleave_group(int8_t* codes) {
  __m256i r[8];
  auto* v = reinterpret_cast<__m256i*>(codes);
  for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_si256(v + j);
  transpose8(r);
  for (int i = 0; i < 8; ++i) _mm256_storeu_si256(v + i, r[i]);
}

// A group's c (8 blocks x 32 int16, column order) in the order of the widened weight codes of the int16
// products (tile_groups16, Rows::pairs and wide): piece t (t = 0..3) is 4 vectors of 16 int16, and lanes
// 2j and 2j + 1 of vector v hold columns 8t + 4 (v % 2) + 2 (v / 2) and the next one of block j, so that
// the pair sums of a product land one block per 32-bit lane: vector 4t + v is column pair
// 4t + 2 (v % 2) + v / 2 of the 8 blocks, a transpose of 8 x 16 four-byte words.
inline void interleave_group16(int16_t* c) {
  __m256i lo[8], hi[8];  // column pairs 0-7 and 8-15 of the 8 blocks
  auto* v = reinterpret_cast<__m256i*>(c);
  for (int j = 0; j < 8; ++j) {
    lo[j] = _mm256_loadu_si256(v + 2 * j);
    hi[j] = _mm256_loadu_si256(v + 2 * j + 1);
  }
  transpose8(lo);
  transpose8(hi);
  for (int t = 0; t < 4; ++t)
    for (int k = 0; k < 4; ++k) {
      const int pair = 4 * t + 2 * (k % 2) + k / 2;
      _mm256_storeu_si256(v + 4 * t + k, pair < 8 ? lo[pair] : hi[pair - 8]);
    }
}

// A group's c (8 blocks x 32 int16, column order) in the order of the 512-bit int16 products
// (tile_groups512w): vector v (32 int16) holds columns 4v .. 4v + 3 of block j at elements 4j .. 4j + 3,
// the order of the grouped weight codes widened to int16 (Rows::wide512): a transpose of 8 x 8
// eight-byte words.
inline void interleave_group512(int16_t* c) {
  uint64_t words[64];
  std::memcpy(words, c, sizeof(words));
  for (int j = 0; j < 8; ++j)
    for (int v = 0; v < 8; ++v) std::memcpy(c + 32 * v + 4 * j, &words[8 * j + v], 8);
}

// Round x [K] into a (and with two planes b and c), d, sums, csum and csum_lo. With two planes the
// integer sum of a block is q . (254 a + b) = 254 (q . a) + (q . b), exact in int32, and d is stored as
// d / 254. The first `grouped` blocks of a and b are interleaved per 8 (grouped weights; 0 for plain int8).
inline void round_row(const float* x, int64_t K, bool two, int64_t grouped, int8_t* a, int8_t* b, int16_t* c16,
                      float* d, float* sums, int32_t* csum, int32_t* csum_lo) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t blk = 0; blk < K / QK; ++blk) {
    const float* xb = x + blk * QK;
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps(), sum = _mm256_setzero_ps();
    for (int c = 0; c < 4; ++c) {
      v[c] = _mm256_loadu_ps(xb + 8 * c);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[c]));
      sum = _mm256_add_ps(sum, v[c]);
    }
    const float mx = lmforge_simd::hmax(amax);
    const float scale = mx / 127.f;
    const __m256 inv = _mm256_set1_ps(mx > 0.f ? 127.f / mx : 0.f);
    __m256i ia[4], ib[4];
    for (int c = 0; c < 4; ++c) {
      const __m256 t = _mm256_mul_ps(v[c], inv);
      const __m256 r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      ia[c] = _mm256_cvtps_epi32(r);
      if (two) ib[c] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(t, r), _mm256_set1_ps(254.f)));
    }
    auto pack = [](const __m256i* s, int8_t* out) {  // 4 x 8 int32 -> 32 int8, in column order
      const __m256i p01 = _mm256_packs_epi32(s[0], s[1]), p23 = _mm256_packs_epi32(s[2], s[3]);
      const __m256i p = _mm256_packs_epi16(p01, p23);
      // packs works per 128-bit lane: restore the order of the 8 groups of 4 columns
      const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permutevar8x32_epi32(p, order));
    };
    pack(ia, a + blk * QK);
    if (two) {
      pack(ib, b + blk * QK);
      for (int h = 0; h < 2; ++h) {  // c = 254 a + b as int16, in column order (packs works per 128-bit lane)
        const __m256i lo = _mm256_add_epi32(_mm256_mullo_epi32(ia[2 * h], _mm256_set1_epi32(254)), ib[2 * h]);
        const __m256i hi = _mm256_add_epi32(_mm256_mullo_epi32(ia[2 * h + 1], _mm256_set1_epi32(254)), ib[2 * h + 1]);
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c16 + blk * QK + 16 * h), packed);
      }
    }
    d[blk] = two ? scale / 254.f : scale;
    sums[blk] = hsum(sum);
    __m256i lo = _mm256_add_epi32(ia[0], ia[1]), hi = _mm256_add_epi32(ia[2], ia[3]);  // columns 0-15, 16-31
    if (two) {
      lo = _mm256_add_epi32(_mm256_mullo_epi32(lo, _mm256_set1_epi32(254)), _mm256_add_epi32(ib[0], ib[1]));
      hi = _mm256_add_epi32(_mm256_mullo_epi32(hi, _mm256_set1_epi32(254)), _mm256_add_epi32(ib[2], ib[3]));
    }
    alignas(32) int32_t lanes[8], high[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), lo);
    _mm256_store_si256(reinterpret_cast<__m256i*>(high), hi);
    csum_lo[blk] = lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
    csum[blk] = csum_lo[blk] + high[0] + high[1] + high[2] + high[3] + high[4] + high[5] + high[6] + high[7];
  }
  for (int64_t blk = 0; blk < grouped; blk += GROUP) {
    interleave_group(a + blk * QK);
    if (two) {
      interleave_group(b + blk * QK);
      // only the int16 products read c's groups
      if constexpr (HAS_ZMM_WIDE) interleave_group512(c16 + blk * QK);
      if constexpr (!HAS_VNNI) interleave_group16(c16 + blk * QK);
    }
  }
}

// Storage aligned to a cache line, so that no 32-byte load of the codes straddles two lines.
template <typename T>
struct LineAligned {
  using value_type = T;
  LineAligned() = default;
  template <typename U>
  LineAligned(const LineAligned<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const LineAligned<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LineAligned<U>&) const { return false; }
};
template <typename T>
using AlignedVector = std::vector<T, LineAligned<T>>;

// M rows of x rounded for the products: each row's codes, block scales and sums, and their QRow views.
// grouped: the blocks the weight holds in interleaved groups (its layout's grouped(); 0 for plain int8).
struct RoundedRows {
  AlignedVector<int8_t> a, b;
  AlignedVector<int16_t> c;
  std::vector<float> meta;
  std::vector<int32_t> csums;  // csum and csum_lo of each row
  std::vector<QRow> rows;
  void round(const float* x, int64_t M, int64_t K, bool two, int64_t grouped) {
    reserve(M, K, two);
    round_rows(x, 0, M, K, two, grouped);
  }
  // room for M rows of up to K columns, so that threads can then round rows side by side
  void reserve(int64_t M, int64_t K, bool two) {
    a.resize(M * K);
    if (two) {
      b.resize(M * K);
      c.resize(M * K);
    }
    meta.resize(M * padded(K) * 2);
    csums.resize(M * padded(K) * 2);
    rows.resize(M);
  }
  // rows m0 .. m1 - 1 of x [M, K] (reserve first)
  void round_rows(const float* x, int64_t m0, int64_t m1, int64_t K, bool two, int64_t grouped) {
    const int64_t nb8 = padded(K);
    for (int64_t m = m0; m < m1; ++m) {
      int8_t* am = a.data() + m * K;
      int8_t* bm = two ? b.data() + m * K : nullptr;
      int16_t* cm = two ? c.data() + m * K : nullptr;
      float* d = meta.data() + m * nb8 * 2;
      int32_t* cs = csums.data() + m * nb8 * 2;
      std::fill(d, d + nb8 * 2, 0.f);
      std::fill(cs, cs + nb8 * 2, 0);
      round_row(x + m * K, K, two, grouped, am, bm, cm, d, d + nb8, cs, cs + nb8);
      rows[m] = QRow{am, bm, cm, d, d + nb8, cs, cs + nb8};
    }
  }

 private:
  static int64_t padded(int64_t K) { return (K / QK + 7) / 8 * 8; }  // block scales and sums padded with zeros to 8
};

// --------------------------------------------------------------------------- weight decoders
// codes(block) gives the 32 codes of a plain block as bytes in column order, in the form the u8 x s8
// products take (unsigned first operand): int4 codes 0..15 as they are; int8 codes as |q|, their signs
// moved onto the activation (sign_epi8). codes16(block, lo, hi) gives them as int16, columns 0-15 and
// 16-31. The grouped layouts (GROUPS) also give a group's vectors 2t and 2t + 1 (vectors(group, t, ..):
// lane j holds 4 columns of block j) and their products with the activation's (dot2); with BIASED the
// products are of the codes + 128, and the tile takes 128 times the activation's code sums off. For the
// int16 products (tile_groups16) they give a piece's codes prepared (pairs) and widened to words (wide).

// The int16 products take the codes of a group's vector (4-byte lane j: 4 codes of block j) as two
// vectors of 16 words: bytes 0, 1 (h = 0) or 2, 3 (h = 1) of every block's lane, block j's at words 2j
// and 2j + 1, so that a madd's pair sums land one block per 32-bit lane. One byte shuffle within each
// 128-bit half does it, the code in the low byte of its word and zero in the high one (pair_words), or
// in the high byte (pair_words<true>: an arithmetic shift by 8 then sign-extends it). On Zen 3, where a
// 256-bit vpmovzxbw / vpmovsxbw takes ~2.5 times a shuffle, the A/B harness measured the tiles at 4
// activation rows at 0.78-0.87x the time of a reorder and a widening move (int4 and grouped int8).
template <bool HIGH>
inline __m256i pair_words(__m256i v, int h) {
  if constexpr (HIGH) {
    const __m256i lo = _mm256_setr_epi8(-1, 0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13,
                                        -1, 0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13);
    const __m256i hi = _mm256_setr_epi8(-1, 2, -1, 3, -1, 6, -1, 7, -1, 10, -1, 11, -1, 14, -1, 15,
                                        -1, 2, -1, 3, -1, 6, -1, 7, -1, 10, -1, 11, -1, 14, -1, 15);
    return _mm256_shuffle_epi8(v, h ? hi : lo);
  } else {
    const __m256i lo = _mm256_setr_epi8(0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13, -1,
                                        0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13, -1);
    const __m256i hi = _mm256_setr_epi8(2, -1, 3, -1, 6, -1, 7, -1, 10, -1, 11, -1, 14, -1, 15, -1,
                                        2, -1, 3, -1, 6, -1, 7, -1, 10, -1, 11, -1, 14, -1, 15, -1);
    return _mm256_shuffle_epi8(v, h ? hi : lo);
  }
}

// The 16 bytes at p as 16 words in order, each byte in the low byte of its word (HIGH = false; the high
// byte zero) or in the high byte (HIGH: the low byte zero): a broadcast load and one byte shuffle, the
// widening of a plain block for the int16 products (plain int8 on Zen 3: 0.86-0.91x the time of
// vpmovsxbw at 1 and 4 activation rows, A/B harness).
template <bool HIGH>
inline __m256i byte_words(const void* p) {
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i low = _mm256_setr_epi8(0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1, 6, -1, 7, -1,
                                       8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1);
  const __m256i high = _mm256_setr_epi8(-1, 0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1, 6, -1, 7,
                                        -1, 8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15);
  return _mm256_shuffle_epi8(v, HIGH ? high : low);
}

template <typename S>
struct Int4Rows : Int4Layout<S> {
  static constexpr bool GROUPS = true, BIASED = false;
  static __m256i codes(const uint8_t* block) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block));
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
  }
  static __m256i signed_act(__m256i act, const uint8_t*) { return act; }
  static void codes16(const uint8_t* block, __m256i& lo, __m256i& hi) {
    const __m256i wide = byte_words<false>(block);
    lo = _mm256_and_si256(wide, _mm256_set1_epi16(0x0F));
    hi = _mm256_srli_epi16(wide, 4);
  }
  // piece t (32 bytes) of a group: its low nibbles are vector 2t, its high ones vector 2t + 1
  static void vectors(const uint8_t* group, int t, __m256i& v0, __m256i& v1) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 32 * t));
    const __m256i low = _mm256_set1_epi8(0x0F);
    v0 = _mm256_and_si256(raw, low);
    v1 = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
  }
  static __m256i dot2(__m256i acc, __m256i v0, __m256i s0, __m256i v1, __m256i s1) {
    return dot2_u4s8(acc, v0, s0, v1, s1);
  }
#if defined(__AVX512BW__)
  // vectors 2t and 2t + 1 of a group as 32 int16 codes each (tile_groups512w): piece t widened, its low
  // nibbles and its high ones
  static void wide512(const uint8_t* group, int t, __m512i& z0, __m512i& z1) {
    const __m512i wide = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 32 * t)));
    z0 = _mm512_and_si512(wide, _mm512_set1_epi16(0x0F));
    z1 = _mm512_srli_epi16(wide, 4);
  }
  // 512 bits (tile_groups512): vectors 2t and 2t + 1 of a group side by side, from piece t's low and
  // high nibbles
  static __m512i piece512(const uint8_t* group, int t) {
    const __m512i raw = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 32 * t)));
    const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);  // 0 | 4 bits
    return _mm512_and_si512(_mm512_srlv_epi16(raw, shift), _mm512_set1_epi8(0x0F));
  }
  // piece512 with the high nibbles left in place (16 times the codes, at most 240): one AND. Products
  // with the upper 256 bits are then HIGH_SHIFT bits too large, which the tile shifts off their sums.
  static constexpr int HIGH_SHIFT = 4;
  static __m512i piece512x(const uint8_t* group, int t) {
    const __m512i raw = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 32 * t)));
    return _mm512_and_si512(raw, _mm512_inserti64x4(_mm512_set1_epi8(0x0F), _mm256_set1_epi8(static_cast<char>(0xF0)), 1));
  }
#endif
  // The int16 products (tile_groups16): piece t's bytes as pair words (h = 0, 1), both nibbles of a
  // code byte in the word's low byte; wide takes the low nibbles (u = 0, vector 2t) or the high ones
  // (u = 1, vector 2t + 1), in the order of interleave_group16.
  static void pairs(const uint8_t* group, int t, __m256i (&p)[2]) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 32 * t));
    p[0] = pair_words<false>(raw, 0);
    p[1] = pair_words<false>(raw, 1);
  }
  static __m256i wide(const __m256i (&p)[2], int h, int u) {
    return u ? _mm256_srli_epi16(p[h], 4) : _mm256_and_si256(p[h], _mm256_set1_epi16(0x0F));
  }
  // Without VNNI, with two planes, a group's products stay int16 pair sums until the group ends
  // (pair_sums), and one madd per plane then widens them, with 254 for plane a: per 64 weights 4
  // multiplies and 4 adds, against 6 multiplies and 4 adds when each piece's sums were widened (A/B
  // harness on Zen 3, 1 activation row: 0.84-0.96x the time). Exact: a pair sums at most 2 * 15 * 127 =
  // 3810 in magnitude, the group's 8 vectors 30480 < 2^15. One plane (act-bits 8) takes them from two
  // activation rows on: 2 multiplies and 2 adds per 64 weights and row against 3 and 2 (A/B harness on
  // Zen 2, one multiply port, 4 rows: 0.80-0.87x the time at K = 576 and 1,536); at one row only with
  // one multiply port (Zen 2: 0.79-0.93x the time, L2 and DRAM; Zen 3: 0.98-1.20x, which keeps dot2).
  static constexpr bool SUMS16 = !HAS_VNNI;
  static __m256i pair_sums(__m256i acc16, __m256i v0, __m256i s0, __m256i v1, __m256i s1) {
    return _mm256_add_epi16(acc16, _mm256_add_epi16(_mm256_maddubs_epi16(v0, s0), _mm256_maddubs_epi16(v1, s1)));
  }
};

// C = int8_t: plain int8; uint8_t: grouped (codes + 128; the plain blocks after the groups are read back
// as int8).
template <typename S, typename C = int8_t>
struct Int8Rows : Int8Layout<S, C> {
  static constexpr bool GROUPS = std::is_same_v<C, uint8_t>, SUMS16 = false;
  static constexpr bool BIASED = GROUPS && HAS_VNNI;  // without VNNI the products need signed codes
  static __m256i load(const C* block) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block));
    return GROUPS ? _mm256_xor_si256(v, _mm256_set1_epi8(-128)) : v;  // int8 codes
  }
  static __m256i codes(const C* block) { return _mm256_abs_epi8(load(block)); }
  static __m256i signed_act(__m256i act, const C* block) { return _mm256_sign_epi8(act, load(block)); }
  static void codes16(const C* block, __m256i& lo, __m256i& hi) {  // sign-extended by the shift
    const __m256i flip = _mm256_set1_epi16(GROUPS ? -32768 : 0);  // codes + 128 -> codes
    lo = _mm256_srai_epi16(_mm256_xor_si256(byte_words<true>(block), flip), 8);
    hi = _mm256_srai_epi16(_mm256_xor_si256(byte_words<true>(block + 16), flip), 8);
  }
  static void vectors(const C* group, int t, __m256i& v0, __m256i& v1) {
    v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 64 * t));
    v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 64 * t + 32));
  }
  // The int16 products: vectors 2t + u (u = 0, 1) of a group, their codes + 128 with the top bit flipped
  // (the int8 codes), kept (pairs); wide gives vector 2t + u's pair words h, sign-extended.
  static void pairs(const C* group, int t, __m256i (&p)[2]) {
    for (int u = 0; u < 2; ++u)
      p[u] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 64 * t + 32 * u)), _mm256_set1_epi8(-128));
  }
  static __m256i wide(const __m256i (&p)[2], int h, int u) { return _mm256_srai_epi16(pair_words<true>(p[u], h), 8); }
#if defined(__AVX512BW__)
  static void wide512(const C* group, int t, __m512i& z0, __m512i& z1) {  // int8 codes as int16
    const __m256i flip = _mm256_set1_epi8(-128);
    z0 = _mm512_cvtepi8_epi16(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 64 * t)), flip));
    z1 = _mm512_cvtepi8_epi16(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 64 * t + 32)), flip));
  }
  static __m512i piece512(const C* group, int t) {  // vectors 2t and 2t + 1 (tile_groups512)
    return _mm512_loadu_si512(group + 64 * t);
  }
  static constexpr int HIGH_SHIFT = 0;
  static __m512i piece512x(const C* group, int t) { return piece512(group, t); }
#endif
  static __m256i dot2(__m256i acc, __m256i v0, __m256i s0, __m256i v1, __m256i s1) {
    if constexpr (BIASED) {
      return dot_u8s8(dot_u8s8(acc, v0, s0), v1, s1);
    } else {
      const __m256i flip = _mm256_set1_epi8(-128);
      const __m256i q0 = _mm256_xor_si256(v0, flip), q1 = _mm256_xor_si256(v1, flip);
      acc = dot_u8s8(acc, _mm256_abs_epi8(q0), _mm256_sign_epi8(s0, q0));
      return dot_u8s8(acc, _mm256_abs_epi8(q1), _mm256_sign_epi8(s1, q1));
    }
  }
};

// ------------------------------------------------------------------------------------ tiles

// The weight scales (and mins) of row r for blocks b0 .. b0 + n - 1 (n <= 8), one per block, as fp32;
// with half-block scales (Rows::HALF) two per block, 16 in all.
template <typename Rows>
__attribute__((always_inline)) inline void block_params(const Rows& w, int64_t N, int64_t r, int64_t b0, int64_t n,
                                                        int64_t bpg, float* scale, float* min) {
  if constexpr (Rows::HALF) {  // K-quant half-block scales: 2 per block, a record per 8 half blocks
    const int64_t i = r * w.G + 2 * b0;
    if (n == 8) {
      _mm256_storeu_ps(scale, load8(w.scales + i));
      _mm256_storeu_ps(scale + 8, load8(w.scales + i + 8));
    } else {
      for (int64_t j = 0; j < 16; ++j) scale[j] = j < 2 * n ? w.scale(r, 2 * b0 + j) : 0.f;
    }
    return;
  }
  if (w.G == 1) {  // one scale per row (lmforge int8)
    _mm256_storeu_ps(scale, _mm256_set1_ps(w.scale(r, 0)));
    if constexpr (Rows::HAS_MIN) _mm256_storeu_ps(min, _mm256_set1_ps(w.min(r, 0)));
    return;
  }
  if (bpg == 1 && (r * w.G + b0 + 8 <= N * w.G)) {  // a scale per block (GGUF): 8 at a time. Past the
    // row's end the lanes hold the next row's values, which meet zero activation scales and sums.
    const __m256 s = load8(w.scales + r * w.G + b0);
    _mm256_storeu_ps(scale, s);
    if constexpr (Rows::HAS_MIN)
      _mm256_storeu_ps(min, w.mins ? load8(w.mins + r * w.G + b0) : _mm256_mul_ps(s, _mm256_set1_ps(-8.f)));
    return;
  }
  int64_t g = b0 / bpg, left = bpg - b0 % bpg;  // blocks left in group g
  for (int64_t j = 0; j < 8; ++j) {
    const bool in = j < n;
    scale[j] = in ? w.scale(r, g) : 0.f;
    if constexpr (Rows::HAS_MIN) min[j] = in ? w.min(r, g) : 0.f;
    if (--left == 0) {
      ++g;
      left = bpg;
    }
  }
}

// block_params for a whole group (n = GROUP) in registers.
template <typename Rows>
__attribute__((always_inline)) inline void group_params(const Rows& w, int64_t N, int64_t r, int64_t b0, int64_t bpg,
                                                        __m256& scale, __m256& min) {
  if (bpg == 1 && w.G > 1 && (r * w.G + b0 + 8 <= N * w.G)) {
    scale = load8(w.scales + r * w.G + b0);
    if constexpr (Rows::HAS_MIN) min = w.mins ? load8(w.mins + r * w.G + b0) : _mm256_mul_ps(scale, _mm256_set1_ps(-8.f));
    return;
  }
  alignas(32) float ws[8], wm[8];
  block_params(w, N, r, b0, GROUP, bpg, ws, wm);
  scale = _mm256_load_ps(ws);
  if constexpr (Rows::HAS_MIN) min = _mm256_load_ps(wm);
}

// The half-block scales of row r for blocks b0 .. b0 + 7 (a whole group): those of their columns 0-15
// (lo) and 16-31 (hi), one block per lane. The scales alternate lo, hi in the row's K-quant records.
template <typename Rows>
__attribute__((always_inline)) inline void half_scales(const Rows& w, int64_t r, int64_t b0, __m256& lo, __m256& hi) {
  const __m256 a = load8(w.scales + r * w.G + 2 * b0), b = load8(w.scales + r * w.G + 2 * b0 + 8);
  // per 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6 (blocks 0 1 4 5 | 2 3 6 7), then the 64-bit pairs in order
  lo = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
  hi = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
}

// The activation's integer code sums of blocks b0 .. b0 + 7, one per lane: whole blocks (HS = 1), or
// their columns 0-15 (h = 0) or 16-31 (h = 1).
template <int HS>
__attribute__((always_inline)) inline __m256i code_sums(const QRow& x, int64_t b0, int h) {
  const __m256i all = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.csum + b0));
  if constexpr (HS == 1) return all;
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.csum_lo + b0));
  return h == 0 ? lo : _mm256_sub_epi32(all, lo);
}

// How a tile multiplies the interleaved groups of its weight rows with two activation planes: as int16
// products of the widened codes with c (tile_groups16), or as u8 x s8 products with a and b. Without
// VNNI the int16 products take fewer multiplies (4 per 64 weights and activation row against 6 for
// int4, against 8 and the sign trick for int8), which pays from two activation rows on, where the
// widening is shared (benchmarks/RESULTS.md); with VNNI the u8 x s8 products are one instruction each.
template <typename Rows, int MR, bool TWO>
constexpr bool wide_groups() {
  return Rows::GROUPS && !Rows::HALF && TWO && !HAS_VNNI && MR > 1;
}

// With 512-bit int16 products (HAS_ZMM_WIDE) two planes at several activation rows take them
// (tile_groups512w); one row keeps the u8 x s8 ones (tile_groups512, or tile_groups without HAS_ZMM).
template <typename Rows, int MR, bool TWO>
constexpr bool wide_groups512() {
  return Rows::GROUPS && !Rows::HALF && TWO && HAS_ZMM_WIDE && MR > 1;
}

// Weight rows per tile for MR activation rows. int8 rows go one at a time: one sequential stream per
// thread reads DRAM ~35% faster than 4 interleaved 576-byte rows (measured on the default model's
// shapes, 2 threads); int4 tiles take 4 rows, which amortizes their decoding (2 with several activation
// rows: the accumulators must fit in the registers; 1 with the int16 pair sums of one plane, which fill
// them: A/B harness on Zen 2, 4 rows, 0.95-0.98x the time of 2). The 256-bit int16 products take 1:
// with 2 the tile's fp32 accumulators left the registers, and GCC reads each activation vector from
// memory once per weight row anyway (A/B harness on Zen 2, int4 at 4 activation rows: 0.92-0.96x the
// time of 2 rows at K = 576 and 1,536, in L2 and from DRAM; grouped int8 0.90-1.00x). In 512-bit
// vectors (tile_groups512w, 32 registers) 4 int4 rows, and 2 int8 rows on Zen 5 (A/B harness at 4
// activation rows, in L2: 0.86-0.91x the time of 1 int8 row, 0.97-0.98x of 2 int4) but 1 on Zen 4
// (HAS_ZMM_WIDE alone; from DRAM 2 rows took 1.16x the time of the 256-bit tile, 1 row 0.92-0.93x).
// With tile_groups512 (HAS_ZMM), one plane at several activation rows also takes 4 int4 rows: its
// epilogue pairs the activation rows, which leaves room, and the plain blocks go through cross_tail8
// (A/B harness on an Emerald Rapids VM, 4 activation rows: 0.62x the time of 2 rows at K = 576, in L2
// and from DRAM; 0.88-0.92x at K = 1,536 and 2,048, which have no plain blocks).
template <typename Rows, int MR, bool TWO>
constexpr int tile_rows() {
  if constexpr (wide_groups<Rows, MR, TWO>()) return 1;
  if constexpr (wide_groups512<Rows, MR, TWO>()) return Rows::BLOCK_BYTES == QK ? (HAS_ZMM ? 2 : 1) : 4;
  if constexpr (Rows::BLOCK_BYTES == QK) return 1;
  if constexpr (HAS_ZMM && !Rows::HALF) return 4;
  return MR == 1 ? 4 : (Rows::SUMS16 ? 1 : 2);
}

// How far ahead the tiles prefetch their weight rows, in tiles: streaming from DRAM needs more bytes in
// flight than one tile's (0.7-0.8x the time of prefetching the next tile, one thread, int4 and grouped
// int8 rows of 576 columns, 1 activation row; 4 and 8 tiles ahead measured alike).
constexpr int64_t AHEAD = 4;

// Prefetches piece t (of 4) of group g of weight row n: one request per 64 bytes.
template <typename Rows>
__attribute__((always_inline)) inline void prefetch_piece(const Rows& w, int64_t n, int64_t g, int t) {
  constexpr int64_t PIECE = Rows::GROUP_BYTES / 4;
  if ((PIECE * t) % 64 == 0)
    _mm_prefetch(reinterpret_cast<const char*>(w.row(n) + g * Rows::GROUP_BYTES + PIECE * t), _MM_HINT_T0);
}

// A group's integer sums s (one block per lane) into the tile's accumulators: one conversion and one
// multiply with the 8 blocks' scale * d per row, and the mins with the 8 block sums. With half-block
// scales (Rows::HALF) s[0] holds the sums of the blocks' columns 0-15 and s[1] those of 16-31, each
// with its scales.
template <int R, int MR, typename Rows, int HS>
__attribute__((always_inline)) inline void add_group(const Rows& w, int64_t N, int64_t n0, int64_t b0, const QRow* xr,
                                                     const __m256i (&s)[HS][R][MR], __m256 (&acc)[R][MR]) {
  UNROLL for (int r = 0; r < R; ++r) {
    __m256 scale[HS], min = _mm256_setzero_ps();
    if constexpr (Rows::HALF) {
      half_scales(w, n0 + r, b0, scale[0], scale[HS - 1]);
    } else {
      group_params(w, N, n0 + r, b0, w.K / QK / w.G, scale[0], min);
    }
    UNROLL for (int m = 0; m < MR; ++m) {
      const __m256 d = _mm256_loadu_ps(xr[m].d + b0);
      UNROLL for (int h = 0; h < HS; ++h)
        acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[h][r][m]), _mm256_mul_ps(scale[h], d), acc[r][m]);
      if constexpr (Rows::HAS_MIN)
        acc[r][m] = _mm256_fmadd_ps(min, _mm256_loadu_ps(xr[m].sums + b0), acc[r][m]);
    }
  }
}

// add_group for sums of whole blocks
template <int R, int MR, typename Rows>
__attribute__((always_inline)) inline void add_group(const Rows& w, int64_t N, int64_t n0, int64_t b0, const QRow* xr,
                                                     const __m256i (&s)[R][MR], __m256 (&acc)[R][MR]) {
  add_group(w, N, n0, b0, xr, reinterpret_cast<const __m256i(&)[1][R][MR]>(s), acc);
}

// tile_groups with int16 products: per group, each (weight row, activation row) sums its 8 blocks one
// per lane, as tile_groups does (tile_rows gives it one weight row at a time). Exact in int32 (a block
// sums 32 products of at most 128 x 32385).
template <int R, int MR, typename Rows>
__attribute__((always_inline)) inline void tile_groups16(const Rows& w, int64_t n0, const QRow* xr, int64_t N,
                                                         __m256 (&acc)[R][MR]) {
  const int64_t groups = w.grouped() / GROUP;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t b0 = g * GROUP;
    __m256i s[R][MR];
    UNROLL for (int r = 0; r < R; ++r)
      UNROLL for (int m = 0; m < MR; ++m) s[r][m] = _mm256_setzero_si256();
    UNROLL for (int t = 0; t < 4; ++t) {
      __m256i p[R][2];
      UNROLL for (int r = 0; r < R; ++r) {
        prefetch_piece(w, n0 + AHEAD * R + r, g, t);  // the same bytes of the rows AHEAD tiles on
        Rows::pairs(w.row(n0 + r) + g * Rows::GROUP_BYTES, t, p[r]);
      }
      UNROLL for (int k = 0; k < 4; ++k) {  // the piece's activation vector k: h = k / 2, u = k % 2
        __m256i v[R];
        UNROLL for (int r = 0; r < R; ++r) v[r] = Rows::wide(p[r], k / 2, k % 2);
        UNROLL for (int m = 0; m < MR; ++m) {
          const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[m].c + b0 * QK + 64 * t + 16 * k));
          UNROLL for (int r = 0; r < R; ++r) {
            s[r][m] = _mm256_add_epi32(s[r][m], _mm256_madd_epi16(v[r], c));
            // one product at a time: else GCC reassociates a group's sums into a tree and spills
            asm("" : "+x"(s[r][m]));
          }
        }
      }
    }
    add_group(w, N, n0, b0, xr, s, acc);
  }
}

// The interleaved groups of a tile (int4, grouped int8): per group of 8 blocks, each row's integer sums
// come out one block per lane (dot products of 4 codes at a time), then go to add_group. With half-block
// scales pieces 0-1 (columns 0-15 of every block) and 2-3 (16-31) are summed apart.
template <int R, int MR, bool TWO, typename Rows>
__attribute__((always_inline)) inline void tile_groups(const Rows& w, int64_t n0, const QRow* xr, int64_t N,
                                                       __m256 (&acc)[R][MR]) {
  // sa (and sb) hold int16 pair sums until the group ends: always with two planes, with one from two
  // activation rows on or with one multiply port
  constexpr bool S16 = (TWO || MR > 1 || ONE_IMUL_PORT) && Rows::SUMS16;
  constexpr int HS = Rows::HALF ? 2 : 1, PIECES = 4 / HS;  // sums per group, pieces per sum
  const int64_t groups = w.grouped() / GROUP;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t b0 = g * GROUP;
    __m256i out[HS][R][MR];
    UNROLL for (int h = 0; h < HS; ++h) {
      __m256i sa[R][MR], sb[R][MR];
      UNROLL for (int r = 0; r < R; ++r)
        UNROLL for (int m = 0; m < MR; ++m) sa[r][m] = sb[r][m] = _mm256_setzero_si256();
      UNROLL for (int t = h * PIECES; t < (h + 1) * PIECES; ++t) {
        UNROLL for (int r = 0; r < R; ++r) {
          prefetch_piece(w, n0 + AHEAD * R + r, g, t);  // the same bytes of the rows AHEAD tiles on
          __m256i v0, v1;
          Rows::vectors(w.row(n0 + r) + g * Rows::GROUP_BYTES, t, v0, v1);
          UNROLL for (int m = 0; m < MR; ++m) {  // activation vectors 2t and 2t + 1 of the group
            const int8_t* a = xr[m].a + b0 * QK + 64 * t;
            const int8_t* b = TWO ? xr[m].b + b0 * QK + 64 * t : nullptr;
            auto at = [](const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); };
            if constexpr (S16) {
              sa[r][m] = Rows::pair_sums(sa[r][m], v0, at(a), v1, at(a + 32));
              if constexpr (TWO) {
                sb[r][m] = Rows::pair_sums(sb[r][m], v0, at(b), v1, at(b + 32));
                asm("" : "+x"(sa[r][m]), "+x"(sb[r][m]));  // else GCC spills the sums (1.1x the time)
              } else {
                asm("" : "+x"(sa[r][m]));
              }
            } else {
              sa[r][m] = Rows::dot2(sa[r][m], v0, at(a), v1, at(a + 32));
              if constexpr (TWO) sb[r][m] = Rows::dot2(sb[r][m], v0, at(b), v1, at(b + 32));
            }
          }
        }
      }
      UNROLL for (int r = 0; r < R; ++r)
        UNROLL for (int m = 0; m < MR; ++m) {
          if constexpr (S16 && !TWO) {
            sa[r][m] = _mm256_madd_epi16(sa[r][m], _mm256_set1_epi16(1));
          } else if constexpr (S16) {
            sa[r][m] = _mm256_add_epi32(_mm256_madd_epi16(sa[r][m], _mm256_set1_epi16(254)),
                                        _mm256_madd_epi16(sb[r][m], _mm256_set1_epi16(1)));
          } else if constexpr (TWO) {
            sa[r][m] = _mm256_add_epi32(_mm256_mullo_epi32(sa[r][m], _mm256_set1_epi32(254)), sb[r][m]);
          }
          if constexpr (Rows::BIASED)  // (q + 128) . c = q . c + 128 sum(c)
            sa[r][m] = _mm256_sub_epi32(sa[r][m], _mm256_slli_epi32(code_sums<HS>(xr[m], b0, h), 7));
          out[h][r][m] = sa[r][m];
        }
    }
    add_group(w, N, n0, b0, xr, out, acc);
  }
}

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
// The paired epilogues' sums (tile_groups512, tile_groups512w): the halves of acc2[r][p] onto
// activation rows 2p and 2p + 1 of weight row r
template <int R, int MR, int MP1>
__attribute__((always_inline)) inline void add_pairs(const __m512 (&acc2)[R][MP1], __m256 (&acc)[R][MR]) {
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int p = 0; p < MR / 2; ++p) {
      acc[r][2 * p] = _mm256_add_ps(acc[r][2 * p], _mm512_castps512_ps256(acc2[r][p]));
      acc[r][2 * p + 1] = _mm256_add_ps(acc[r][2 * p + 1], _mm512_extractf32x8_ps(acc2[r][p], 1));
    }
}

// The block scales d of activation rows 2p and 2p + 1 for blocks b0 .. b0 + 7 side by side (lanes 0-7
// and 8-15), and with mins their block sums the same way: the 512-bit epilogues take two rows at once.
template <bool MIN>
__attribute__((always_inline)) inline void pair_params(const QRow* xr, int p, int64_t b0, __m512& d2, __m512& sums2) {
  auto both = [](const float* lo, const float* hi) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(lo)), _mm256_loadu_ps(hi), 1);
  };
  d2 = both(xr[2 * p].d + b0, xr[2 * p + 1].d + b0);
  if constexpr (MIN) sums2 = both(xr[2 * p].sums + b0, xr[2 * p + 1].sums + b0);
}

// Sums of products with the upper 256 bits of piece512x, back to the codes' scale (exact: they are
// multiples of 2^HIGH_SHIFT).
template <typename Rows>
__attribute__((always_inline)) inline __m256i high_sums(__m256i v) {
  if constexpr (Rows::HIGH_SHIFT) return _mm256_srai_epi32(v, Rows::HIGH_SHIFT);
  return v;
}
template <typename Rows>
__attribute__((always_inline)) inline __m512i high_sums(__m512i v) {
  if constexpr (Rows::HIGH_SHIFT) return _mm512_srai_epi32(v, Rows::HIGH_SHIFT);
  return v;
}

// tile_groups in 512-bit vectors (HAS_ZMM; VNNI): vectors 2t and 2t + 1 of a group (weight and
// activation) in one register, one dpbusd for both, and the two halves of the sums added after the
// group: lane j and lane 8 + j both hold block j. From two activation rows on, the epilogue takes them
// in pairs (one 512-bit register holds a weight row's 8 block sums with rows 2p and 2p + 1), so that
// each conversion and scaling serves two rows; an odd last row goes alone in 256 bits (grouped int8 at 4
// activation rows, one plane: 0.83-0.86x the time of the per-row epilogue, A/B harness, K = 576).
// int4 pieces come as piece512x (the high nibbles not shifted down: one AND per piece, and one shift
// per sum of the upper halves after the group; exact in int32, a lane sums 16 products of at most
// 240 x 127, times 254 with two planes): 0.82-0.85x the tile time of piece512 at one activation row,
// act-bits 16, K = 1,536 (0.87x at K = 576; act-bits 8: 0.88x; 4 rows at act-bits 8: 0.92-0.96x).
// Half-block scales stay with tile_groups: split in two sums per group here, the epilogue's
// 512-bit multiply ran TinyLlama-shaped Q6_K 0.88-0.90x as fast on an Emerald Rapids VM.
template <int R, int MR, bool TWO, typename Rows>
__attribute__((always_inline)) inline void tile_groups512(const Rows& w, int64_t n0, const QRow* xr, int64_t N,
                                                          __m256 (&acc)[R][MR]) {
  constexpr int MP = MR / 2;
  const int64_t groups = w.grouped() / GROUP, bpg = w.K / QK / w.G;
  __m512 acc2[R][MP + 1];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int p = 0; p < MP; ++p) acc2[r][p] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t b0 = g * GROUP;
    __m512i sa[R][MR], sb[R][MR];
    UNROLL for (int r = 0; r < R; ++r)
      UNROLL for (int m = 0; m < MR; ++m) sa[r][m] = sb[r][m] = _mm512_setzero_si512();
    UNROLL for (int t = 0; t < 4; ++t) {
      UNROLL for (int r = 0; r < R; ++r) {
        prefetch_piece(w, n0 + AHEAD * R + r, g, t);  // the same bytes of the rows AHEAD tiles on
        const __m512i v = Rows::piece512x(w.row(n0 + r) + g * Rows::GROUP_BYTES, t);
        UNROLL for (int m = 0; m < MR; ++m) {
          sa[r][m] = _mm512_dpbusd_epi32(sa[r][m], v, _mm512_loadu_si512(xr[m].a + b0 * QK + 64 * t));
          if constexpr (TWO) sb[r][m] = _mm512_dpbusd_epi32(sb[r][m], v, _mm512_loadu_si512(xr[m].b + b0 * QK + 64 * t));
        }
      }
    }
    if constexpr (MP == 0) {  // one row: the halves added, then add_group
      __m256i s[R][MR];
      UNROLL for (int r = 0; r < R; ++r)
        UNROLL for (int m = 0; m < MR; ++m) {
          const __m512i both = TWO ? _mm512_add_epi32(_mm512_mullo_epi32(sa[r][m], _mm512_set1_epi32(254)), sb[r][m]) : sa[r][m];
          s[r][m] = _mm256_add_epi32(_mm512_castsi512_si256(both), high_sums<Rows>(_mm512_extracti64x4_epi64(both, 1)));
          if constexpr (Rows::BIASED)  // (q + 128) . c = q . c + 128 sum(c)
            s[r][m] = _mm256_sub_epi32(s[r][m], _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[m].csum + b0)), 7));
        }
      add_group(w, N, n0, b0, xr, s, acc);
      continue;
    }
    // both planes in one sum per lane; (q + 128) . c = q . c + 128 sum(c) with BIASED codes
    UNROLL for (int r = 0; r < R; ++r)
      UNROLL for (int m = 0; m < MR; ++m)
        if constexpr (TWO) sa[r][m] = _mm512_add_epi32(_mm512_mullo_epi32(sa[r][m], _mm512_set1_epi32(254)), sb[r][m]);
    __m512 d2[MP + 1], sums2[MP + 1];
    __m512i bias2[MP + 1];
    UNROLL for (int p = 0; p < MP; ++p) {
      pair_params<Rows::HAS_MIN>(xr, p, b0, d2[p], sums2[p]);
      if constexpr (Rows::BIASED) {
        const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[2 * p].csum + b0));
        const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[2 * p + 1].csum + b0));
        bias2[p] = _mm512_slli_epi32(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), 7);
      }
    }
    UNROLL for (int r = 0; r < R; ++r) {
      __m256 ws, wm = _mm256_setzero_ps();
      group_params(w, N, n0 + r, b0, bpg, ws, wm);
      const __m512 scale = _mm512_broadcast_f32x8(ws), min = _mm512_broadcast_f32x8(wm);
      UNROLL for (int p = 0; p < MP; ++p) {  // the halves of rows 2p and 2p + 1 onto lanes 0-7 and 8-15
        const __m512i a = sa[r][2 * p], b = sa[r][2 * p + 1];
        __m512i sum = _mm512_add_epi32(_mm512_shuffle_i64x2(a, b, 0x44), high_sums<Rows>(_mm512_shuffle_i64x2(a, b, 0xEE)));
        if constexpr (Rows::BIASED) sum = _mm512_sub_epi32(sum, bias2[p]);
        acc2[r][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(scale, d2[p]), acc2[r][p]);
        if constexpr (Rows::HAS_MIN) acc2[r][p] = _mm512_fmadd_ps(min, sums2[p], acc2[r][p]);
      }
      if constexpr (MR % 2 == 1) {
        constexpr int m = MR - 1;
        __m256i s = _mm256_add_epi32(_mm512_castsi512_si256(sa[r][m]), high_sums<Rows>(_mm512_extracti64x4_epi64(sa[r][m], 1)));
        if constexpr (Rows::BIASED)
          s = _mm256_sub_epi32(s, _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[m].csum + b0)), 7));
        acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(ws, _mm256_loadu_ps(xr[m].d + b0)), acc[r][m]);
        if constexpr (Rows::HAS_MIN)
          acc[r][m] = _mm256_fmadd_ps(wm, _mm256_loadu_ps(xr[m].sums + b0), acc[r][m]);
      }
    }
  }
  add_pairs(acc2, acc);
}
#endif

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
// tile_groups512 with two planes and several activation rows (wide_groups512): int16 products of the
// widened weight codes with c = 254 a + b (in the order of interleave_group512), one dpwssd per 32
// weights and activation row for both planes.
// Lanes 2j and 2j + 1 hold block j; they are added after the group. Exact in int32 (a lane sums 16
// products of at most 128 x 32385). Against tile_groups512 (two dpbusd per 64 weights, the planes
// combined by a multiply after the group) the A/B harness measures 0.79-0.92x the time at 4 activation
// rows (K = 576 and 1,536, in L2 and from DRAM); at one row it loses on int8 (the widening is not
// shared), so one row keeps tile_groups512.
template <int R, int MR, typename Rows>
__attribute__((always_inline)) inline void tile_groups512w(const Rows& w, int64_t n0, const QRow* xr, int64_t N,
                                                           __m256 (&acc)[R][MR]) {
  // The epilogue takes the activation rows in pairs: one 512-bit register holds a weight row's sums
  // with rows 2p and 2p + 1 (their 8 blocks in lanes 0-7 and 8-15), so that each fold, conversion and
  // scaling serves two rows; an odd last row goes alone in 256 bits.
  constexpr int MP = MR / 2;
  const int64_t groups = w.grouped() / GROUP, bpg = w.K / QK / w.G;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  __m512 acc2[R][MP + 1];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int p = 0; p < MP; ++p) acc2[r][p] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t b0 = g * GROUP;
    __m512i s[R][MR];
    UNROLL for (int r = 0; r < R; ++r)
      UNROLL for (int m = 0; m < MR; ++m) s[r][m] = _mm512_setzero_si512();
    UNROLL for (int t = 0; t < 4; ++t) {
      __m512i z[R][2];
      UNROLL for (int r = 0; r < R; ++r) {
        prefetch_piece(w, n0 + AHEAD * R + r, g, t);  // the same bytes of the rows AHEAD tiles on
        Rows::wide512(w.row(n0 + r) + g * Rows::GROUP_BYTES, t, z[r][0], z[r][1]);
      }
      UNROLL for (int u = 0; u < 2; ++u)
        UNROLL for (int m = 0; m < MR; ++m) {  // activation vector 2t + u of the group
          const __m512i c = _mm512_loadu_si512(xr[m].c + b0 * QK + 64 * t + 32 * u);
          UNROLL for (int r = 0; r < R; ++r) s[r][m] = _mm512_dpwssd_epi32(s[r][m], z[r][u], c);
        }
    }
    __m512 d2[MP + 1], sums2[MP + 1];
    UNROLL for (int p = 0; p < MP; ++p) pair_params<Rows::HAS_MIN>(xr, p, b0, d2[p], sums2[p]);
    UNROLL for (int r = 0; r < R; ++r) {
      __m256 ws, wm = _mm256_setzero_ps();
      group_params(w, N, n0 + r, b0, bpg, ws, wm);
      const __m512 scale = _mm512_broadcast_f32x8(ws), min = _mm512_broadcast_f32x8(wm);
      UNROLL for (int p = 0; p < MP; ++p) {  // lanes 2j and 2j + 1 of both rows' sums onto block j
        const __m512i a = s[r][2 * p], b = s[r][2 * p + 1];
        const __m512i sum = _mm512_add_epi32(_mm512_permutex2var_epi32(a, even, b), _mm512_permutex2var_epi32(a, odd, b));
        acc2[r][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(scale, d2[p]), acc2[r][p]);
        if constexpr (Rows::HAS_MIN)
          acc2[r][p] = _mm512_fmadd_ps(min, sums2[p], acc2[r][p]);
      }
      if constexpr (MR % 2 == 1) {  // lane 2j + 1 onto lane 2j, then the even lanes
        constexpr int m = MR - 1;
        const __m256i s8 = _mm512_cvtepi64_epi32(_mm512_add_epi32(s[r][m], _mm512_srli_epi64(s[r][m], 32)));
        const __m256 sd = _mm256_mul_ps(ws, _mm256_loadu_ps(xr[m].d + b0));
        acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s8), sd, acc[r][m]);
        if constexpr (Rows::HAS_MIN)
          acc[r][m] = _mm256_fmadd_ps(wm, _mm256_loadu_ps(xr[m].sums + b0), acc[r][m]);
      }
    }
  }
  add_pairs(acc2, acc);
}
#endif

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
// The cross-row tails (cross_tail, cross_tail8): the plain blocks after the groups of a tile of 4 weight
// rows, two blocks at a time, with the 128-bit chunks of the 4 rows' codes transposed so that chunk q of
// a product vector holds row q. The epilogue (conversion, scale, min) then serves the 4 rows at once,
// where per row it would scale 16 lanes for 2 useful sums.

// t[k] chunk q = v[q] chunk k
__attribute__((always_inline)) inline void transpose_chunks(const __m512i (&v)[4], __m512i* t) {
  const __m512i t0 = _mm512_shuffle_i64x2(v[0], v[1], 0x44), t1 = _mm512_shuffle_i64x2(v[0], v[1], 0xEE);
  const __m512i t2 = _mm512_shuffle_i64x2(v[2], v[3], 0x44), t3 = _mm512_shuffle_i64x2(v[2], v[3], 0xEE);
  t[0] = _mm512_shuffle_i64x2(t0, t2, 0x88);
  t[1] = _mm512_shuffle_i64x2(t0, t2, 0xDD);
  t[2] = _mm512_shuffle_i64x2(t1, t3, 0x88);
  t[3] = _mm512_shuffle_i64x2(t1, t3, 0xDD);
}

// The scales of blocks A and A + 1 of rows n0 .. n0 + 3: row q's in chunk q of scale[0] (block A) and
// scale[1] (A + 1), and their mins in lane 0 of each chunk (zero elsewhere: the chunk's 4 lanes all take
// the block's sums). With fp16 scales, one per block (GGUF), a row's two scales are one 32-bit load and
// the 4 rows' one conversion: 0.92-0.95x the tile time of a scalar conversion per value (the other
// layouts' way) at one activation row, act-bits 16, K = 576; 0.89-0.92x at act-bits 8, 0.96-0.97x at 4
// rows (one kernel per binary, alternated, on an Emerald Rapids VM).
template <typename Rows>
__attribute__((always_inline)) inline void cross_params(const Rows& w, int64_t n0, int64_t A, int64_t bpg, __m512 (&scale)[2],
                                                        __m512 (&min)[2]) {
  const __m512i chunk_of = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  if constexpr (std::is_same_v<std::decay_t<decltype(w.scales)>, const at::Half*>) {
    if (bpg == 1) {  // lanes 2q and 2q + 1: row q's blocks A and A + 1
      auto pairs = [&](const at::Half* p) {
        auto word = [&](int q) { int32_t v; std::memcpy(&v, p + (n0 + q) * w.G + A, 4); return v; };
        return _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_setr_epi32(word(0), word(1), word(2), word(3))));
      };
      const __m512i even = _mm512_add_epi32(chunk_of, chunk_of), odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
      const __m512 s = pairs(w.scales);
      scale[0] = _mm512_permutexvar_ps(even, s);
      scale[1] = _mm512_permutexvar_ps(odd, s);
      if (w.mins) {
        const __m512 m = pairs(w.mins);
        min[0] = _mm512_maskz_permutexvar_ps(0x1111, even, m);
        min[1] = _mm512_maskz_permutexvar_ps(0x1111, odd, m);
      } else {
        UNROLL for (int b = 0; b < 2; ++b) min[b] = _mm512_maskz_mul_ps(0x1111, scale[b], _mm512_set1_ps(-8.f));
      }
      return;
    }
  }
  UNROLL for (int b = 0; b < 2; ++b) {
    const int64_t g = (A + b) / bpg;
    const __m128 s4 = _mm_setr_ps(w.scale(n0, g), w.scale(n0 + 1, g), w.scale(n0 + 2, g), w.scale(n0 + 3, g));
    const __m128 m4 = _mm_setr_ps(w.min(n0, g), w.min(n0 + 1, g), w.min(n0 + 2, g), w.min(n0 + 3, g));
    scale[b] = _mm512_permutexvar_ps(chunk_of, _mm512_castps128_ps512(s4));
    min[b] = _mm512_maskz_permutexvar_ps(0x1111, chunk_of, _mm512_castps128_ps512(m4));
  }
}

// chunk q of tacc[m] onto row q's accumulator
template <int MR>
__attribute__((always_inline)) inline void add_chunks(const __m512 (&tacc)[MR], __m256 (&acc)[4][MR]) {
  UNROLL for (int m = 0; m < MR; ++m) {
    acc[0][m] = _mm256_add_ps(acc[0][m], _mm256_zextps128_ps256(_mm512_castps512_ps128(tacc[m])));
    acc[1][m] = _mm256_add_ps(acc[1][m], _mm256_zextps128_ps256(_mm512_extractf32x4_ps(tacc[m], 1)));
    acc[2][m] = _mm256_add_ps(acc[2][m], _mm256_zextps128_ps256(_mm512_extractf32x4_ps(tacc[m], 2)));
    acc[3][m] = _mm256_add_ps(acc[3][m], _mm256_zextps128_ps256(_mm512_extractf32x4_ps(tacc[m], 3)));
  }
}
#endif

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
// The loop of the cross-row tails: blocks first .. nb - 1 of the tile's 4 weight rows in pairs (none
// with an odd count: the caller's loop takes them all). pair(A, add) makes blocks A and A + 1's integer
// sums s (chunk q: row q) for each activation row m and passes them to add(m, s), which scales them by
// the weights' scales and x's, adds the weight mins times x's code sums, and keeps them in 512 bits until
// the end. Returns the first block left to the caller.
template <int MR, typename Rows, typename Pair>
__attribute__((always_inline)) inline int64_t cross_pairs(const Rows& w, int64_t n0, const QRow* xr, int64_t first,
                                                          __m256 (&acc)[4][MR], Pair&& pair) {
  const int64_t nb = w.K / QK, bpg = nb / w.G;
  if (first == nb || (nb - first) % 2) return first;
  __m512 tacc[MR];
  UNROLL for (int m = 0; m < MR; ++m) tacc[m] = _mm512_setzero_ps();
  for (int64_t A = first; A < nb; A += 2) {
    __m512 ws[2], wm[2];
    cross_params(w, n0, A, bpg, ws, wm);
    pair(A, [&](int m, const std::array<__m512i, 2>& s) __attribute__((always_inline)) {
      UNROLL for (int b = 0; b < 2; ++b) {
        tacc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[b]), _mm512_mul_ps(ws[b], _mm512_set1_ps(xr[m].d[A + b])), tacc[m]);
        tacc[m] = _mm512_fmadd_ps(wm[b], _mm512_set1_ps(xr[m].sums[A + b]), tacc[m]);
      }
    });
  }
  add_chunks(tacc, acc);
  return nb;
}

// The cross-row tail with two planes at several activation rows (wide_groups512): each row's two blocks
// widened to int16 codes, the chunks of the 4 rows transposed, and per activation row 8 dpwssd (the 8
// columns of c in a chunk broadcast), block A's sums in one register and A + 1's in another. Exact in
// int32 (a lane sums 8 products of at most 15 x 32385). Returns the first block left to the 256-bit
// loop: all of them with an odd count. A/B harness on an Emerald Rapids VM, int4 at 4 activation rows:
// 0.82-0.85x the time of the 256-bit loop at K = 576 (2 plain blocks), 0.89x at K = 896 (4).
template <int MR, typename Rows>
__attribute__((always_inline)) inline int64_t cross_tail(const Rows& w, int64_t n0, const QRow* xr, int64_t first,
                                                         __m256 (&acc)[4][MR]) {
  return cross_pairs(w, n0, xr, first, acc, [&](int64_t A, auto&& add) __attribute__((always_inline)) {
    __m512i lo[4], hi[4];
    UNROLL for (int q = 0; q < 4; ++q) {  // words: block A's columns 0-15 then block A + 1's (lo), 16-31 (hi)
      const __m512i wide = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.row(n0 + q) + A * Rows::BLOCK_BYTES)));
      lo[q] = _mm512_and_si512(wide, _mm512_set1_epi16(0x0F));
      hi[q] = _mm512_srli_epi16(wide, 4);
    }
    // T[k] chunk q = chunk k % 4 of row q's lo (k < 4) or hi: columns 0-7, 8-15 of block A, of A + 1
    // (lo), 16-23, 24-31 of A, of A + 1 (hi)
    __m512i T[8];
    transpose_chunks(lo, T);
    transpose_chunks(hi, T + 4);
    UNROLL for (int m = 0; m < MR; ++m) {
      const int16_t* c = xr[m].c + A * QK;
      auto chunk = [&](int off) { return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + off))); };
      std::array<__m512i, 2> s;
      UNROLL for (int b = 0; b < 2; ++b) {  // block A + b: T[2b], T[2b + 1], T[4 + 2b], T[5 + 2b]
        __m512i t = _mm512_dpwssd_epi32(_mm512_setzero_si512(), T[2 * b], chunk(QK * b));
        t = _mm512_dpwssd_epi32(t, T[2 * b + 1], chunk(QK * b + 8));
        t = _mm512_dpwssd_epi32(t, T[4 + 2 * b], chunk(QK * b + 16));
        s[b] = _mm512_dpwssd_epi32(t, T[5 + 2 * b], chunk(QK * b + 24));
      }
      add(m, s);
    }
  });
}
#endif

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
// cross_tail with u8 x s8 products (tile_groups512's: one activation row, or one plane): each row's two
// blocks as bytes, columns 0-15 of block A, of A + 1, then 16-31 of A, of A + 1 (piece512), the chunks of
// the 4 rows transposed, and per activation row and plane 4 dpbusd (the activation's 16 columns of a
// chunk broadcast), block A's sums in one register and A + 1's in another, one row per chunk. Exact in
// int32 (a lane sums 8 products of at most 15 x 127). A/B harness as above, one activation row at K = 576:
// 0.90-0.92x the time at act-bits 16, 0.81-0.84x at 8.
template <int MR, bool TWO, typename Rows>
__attribute__((always_inline)) inline int64_t cross_tail8(const Rows& w, int64_t n0, const QRow* xr, int64_t first,
                                                          __m256 (&acc)[4][MR]) {
  return cross_pairs(w, n0, xr, first, acc, [&](int64_t A, auto&& add) __attribute__((always_inline)) {
    __m512i v[4], T[4];
    UNROLL for (int q = 0; q < 4; ++q) v[q] = Rows::piece512(w.row(n0 + q) + A * Rows::BLOCK_BYTES, 0);
    transpose_chunks(v, T);
    UNROLL for (int m = 0; m < MR; ++m) {
      auto products = [&](const int8_t* x) {  // block A + b: T[b] (columns 0-15) and T[2 + b] (16-31)
        auto chunk = [&](int off) { return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + off))); };
        std::array<__m512i, 2> s;
        UNROLL for (int b = 0; b < 2; ++b)
          s[b] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), T[b], chunk(QK * b)), T[2 + b], chunk(QK * b + 16));
        return s;
      };
      std::array<__m512i, 2> s = products(xr[m].a + A * QK);
      if constexpr (TWO) {
        const std::array<__m512i, 2> sb = products(xr[m].b + A * QK);
        UNROLL for (int b = 0; b < 2; ++b) s[b] = _mm512_add_epi32(_mm512_mullo_epi32(s[b], _mm512_set1_epi32(254)), sb[b]);
      }
      add(m, s);
    }
  });
}
#endif

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
// Grouped int8's plain blocks (those after the groups) at 2-4 activation rows, two blocks at a time,
// one weight row at a time: the two blocks' 64 stored codes (codes + 128) in one register, block A in
// lanes 0-7 and A + 1 in 8-15. With int16 activations the codes are sign-extended and meet c in two
// dpwssd whose halves are folded; with int8 ones a dpbusd per activation row, then 128 times the
// activation's code sums off (lanes 0 and 8). One conversion and scaling serves both blocks. Exact in
// int32. Returns the first block left to the 256-bit loop: all of them with an odd count. A/B harness on
// an Emerald Rapids VM at K = 576 (2 plain blocks), 4 rows: 0.70-0.98x the tile time of the 256-bit loop
// with int16 activations, 0.85-0.90x with int8. Not for plain int8 (1.3-3x slower: 512-bit integer ops
// issue on 2 ports, 256-bit ones on 3) nor for one row (slower).
template <int R, int MR, bool TWO, typename Rows>
__attribute__((always_inline)) inline int64_t row_tail8(const Rows& w, int64_t n0, const QRow* xr, int64_t first,
                                                        __m256 (&acc)[R][MR]) {
  const int64_t nb = w.K / QK, bpg = nb / w.G;
  if (first == nb || (nb - first) % 2) return first;
  const __m512i halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  __m512 tacc[R][MR];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < MR; ++m) tacc[r][m] = _mm512_setzero_ps();
  for (int64_t A = first; A < nb; A += 2) {
    __m512 d[MR];
    __m512i bias[MR];
    UNROLL for (int m = 0; m < MR; ++m) {  // both blocks' d, and 128 times their code sums in lanes 0 and 8
      d[m] = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(xr[m].d + A)))));
      if constexpr (!TWO) {
        const __m512i cs = _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(xr[m].csum + A)));
        bias[m] = _mm512_slli_epi32(_mm512_maskz_permutexvar_epi32(0x0101, halves, cs), 7);
      }
    }
    UNROLL for (int r = 0; r < R; ++r) {
      const auto* codes = w.row(n0 + r) + A * QK;
      const __m512 scale = _mm512_insertf32x8(_mm512_set1_ps(w.scale(n0 + r, A / bpg)), _mm256_set1_ps(w.scale(n0 + r, (A + 1) / bpg)), 1);
      if constexpr (TWO) {  // int16 products with c: each block's sums in 16 lanes, then folded
        const __m256i flip = _mm256_set1_epi8(-128);  // codes + 128 -> codes
        auto block = [&](int b) {
          return _mm512_cvtepi8_epi16(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + QK * b)), flip));
        };
        const __m512i za = block(0), zb = block(1);
        UNROLL for (int m = 0; m < MR; ++m) {
          const __m512i sa = _mm512_dpwssd_epi32(_mm512_setzero_si512(), za, _mm512_loadu_si512(xr[m].c + A * QK));
          const __m512i sb = _mm512_dpwssd_epi32(_mm512_setzero_si512(), zb, _mm512_loadu_si512(xr[m].c + (A + 1) * QK));
          const __m512i s = _mm512_add_epi32(_mm512_shuffle_i64x2(sa, sb, 0x44), _mm512_shuffle_i64x2(sa, sb, 0xEE));
          tacc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(scale, d[m]), tacc[r][m]);
        }
      } else {  // u8 x s8 products of the stored codes + 128, and 128 times the code sums off
        const __m512i q = _mm512_loadu_si512(codes);
        UNROLL for (int m = 0; m < MR; ++m) {
          const __m512i s = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(xr[m].a + A * QK)), bias[m]);
          tacc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(scale, d[m]), tacc[r][m]);
        }
      }
    }
  }
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < MR; ++m)
      acc[r][m] = _mm256_add_ps(acc[r][m], _mm256_add_ps(_mm512_castps512_ps256(tacc[r][m]), _mm512_extractf32x8_ps(tacc[r][m], 1)));
  return nb;
}
#endif

// The scale of a block's 8 integer lanes (4 columns each) from sd at p: one for all, or with half-block
// scales p[0] for lanes 0-3 (columns 0-15) and p[1] for lanes 4-7.
template <bool HALF>
__attribute__((always_inline)) inline __m256 block_scale(const float* p) {
  if constexpr (!HALF) return _mm256_broadcast_ss(p);
  const __m256 pair = _mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))));
  return _mm256_permutevar8x32_ps(pair, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}

// y[m * ldy + n0 + r] for R weight rows (of N) and MR activation rows. Grouped weights: their interleaved groups
// (tile_groups, or tile_groups16 / tile_groups512 / tile_groups512w), then the plain blocks left over.
// Per plain block the integer sum is turned to fp32 and multiplied with scale * d (made 8 blocks at a time into `sd`); the mins times the block sums of x
// go into the same accumulators. One plane: u8 x s8 products; two: the codes widened to int16 once
// per weight row and multiplied with every row's c.
template <int R, int MR, bool TWO, typename Rows>
inline void dot_tile(const Rows& w, int64_t n0, const QRow* xr, float* y, int64_t N, int64_t ldy) {
  const int64_t nb = w.K / QK, bpg = Rows::HALF ? 0 : nb / w.G, first = w.grouped();
  __m256 acc[R][MR];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < MR; ++m) acc[r][m] = _mm256_setzero_ps();
  if constexpr (wide_groups<Rows, MR, TWO>()) {
    tile_groups16(w, n0, xr, N, acc);
  } else if constexpr (wide_groups512<Rows, MR, TWO>()) {
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
    tile_groups512w(w, n0, xr, N, acc);
#endif
  } else if constexpr (Rows::GROUPS && HAS_ZMM && !Rows::HALF) {
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
    tile_groups512<R, MR, TWO>(w, n0, xr, N, acc);
#endif
  } else if constexpr (Rows::GROUPS) {
    tile_groups<R, MR, TWO>(w, n0, xr, N, acc);
  }
  // sd: per block (or half block) the weight's scale times the activation's
  constexpr int HS = Rows::HALF ? 2 : 1;  // scales per block
  alignas(32) float sd[R][MR][8 * HS];
  alignas(32) float ws[8 * HS], wm[8];
  int64_t b0 = first;
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
  if constexpr (R == 4 && Rows::BLOCK_BYTES == QK / 2) {  // int4 tiles of 4 rows
    if constexpr (wide_groups512<Rows, MR, TWO>())
      b0 = cross_tail<MR>(w, n0, xr, first, acc);
    else if constexpr (HAS_ZMM)
      b0 = cross_tail8<MR, TWO>(w, n0, xr, first, acc);
  } else if constexpr (HAS_ZMM && Rows::GROUPS && Rows::BLOCK_BYTES == QK && !Rows::HALF && !Rows::HAS_MIN && MR > 1) {
    b0 = row_tail8<R, MR, TWO>(w, n0, xr, first, acc);  // grouped int8
  }
#endif
  for (; b0 < nb; b0 += 8) {
    const int64_t n = std::min<int64_t>(8, nb - b0);
    UNROLL for (int r = 0; r < R; ++r) {
      block_params(w, N, n0 + r, b0, n, bpg, ws, wm);
      UNROLL for (int m = 0; m < MR; ++m) {  // the activation's scales and sums are zero past the end
        const __m256 d = _mm256_loadu_ps(xr[m].d + b0);
        if constexpr (Rows::HALF) {  // each block's d for both its halves
          const __m256 d_lo = _mm256_permutevar8x32_ps(d, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
          const __m256 d_hi = _mm256_permutevar8x32_ps(d, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7));
          _mm256_store_ps(sd[r][m], _mm256_mul_ps(_mm256_load_ps(ws), d_lo));
          _mm256_store_ps(sd[r][m] + 8, _mm256_mul_ps(_mm256_load_ps(ws + 8), d_hi));
        } else {
          _mm256_store_ps(sd[r][m], _mm256_mul_ps(_mm256_load_ps(ws), d));
        }
        if constexpr (Rows::HAS_MIN)
          acc[r][m] = _mm256_fmadd_ps(_mm256_load_ps(wm), _mm256_loadu_ps(xr[m].sums + b0), acc[r][m]);
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t blk = b0 + j;
      if constexpr (TWO) {
        UNROLL for (int r = 0; r < R; ++r) {
          const auto* block = w.row(n0 + r) + blk * Rows::BLOCK_BYTES;
          _mm_prefetch(reinterpret_cast<const char*>(w.row(n0 + AHEAD * R + r) + blk * Rows::BLOCK_BYTES), _MM_HINT_T0);
          __m256i lo, hi;
          Rows::codes16(block, lo, hi);
          UNROLL for (int m = 0; m < MR; ++m) {
            const int16_t* c = xr[m].c + blk * QK;
            const __m256i c_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
            const __m256i c_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 16));
            if constexpr (Rows::HALF) {  // columns 0-15 and 16-31 each with their scale
              const __m256i s_lo = dot_s16(_mm256_setzero_si256(), lo, c_lo), s_hi = dot_s16(_mm256_setzero_si256(), hi, c_hi);
              acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s_lo), _mm256_broadcast_ss(&sd[r][m][2 * j]), acc[r][m]);
              acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s_hi), _mm256_broadcast_ss(&sd[r][m][2 * j + 1]), acc[r][m]);
            } else {
              const __m256i s = dot_s16(dot_s16(_mm256_setzero_si256(), lo, c_lo), hi, c_hi);
              acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_broadcast_ss(&sd[r][m][j]), acc[r][m]);
            }
          }
        }
      } else {
        __m256i av[MR];
        UNROLL for (int m = 0; m < MR; ++m) av[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr[m].a + blk * QK));
        UNROLL for (int r = 0; r < R; ++r) {
          const auto* block = w.row(n0 + r) + blk * Rows::BLOCK_BYTES;
          _mm_prefetch(reinterpret_cast<const char*>(w.row(n0 + AHEAD * R + r) + blk * Rows::BLOCK_BYTES), _MM_HINT_T0);
          const __m256i q = Rows::codes(block);
          UNROLL for (int m = 0; m < MR; ++m) {
            const __m256i s = dot_u8s8(_mm256_setzero_si256(), q, Rows::signed_act(av[m], block));
            acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), block_scale<Rows::HALF>(&sd[r][m][HS * j]), acc[r][m]);
          }
        }
      }
    }
  }
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < MR; ++m) y[m * ldy + n0 + r] = hsum(acc[r][m]);
}

// dot_tile into y [MR, N]
template <int R, int MR, bool TWO, typename Rows>
inline void dot_tile(const Rows& w, int64_t n0, const QRow* xr, float* y, int64_t N) {
  dot_tile<R, MR, TWO>(w, n0, xr, y, N, N);
}

}  // namespace lmforge_qact
