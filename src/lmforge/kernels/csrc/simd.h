// Small AVX2 + FMA + F16C helpers shared by the kernels.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace lmforge_simd {

inline float to_float(float v) { return v; }
inline float to_float(c10::Half v) { return _cvtsh_ss(v.x); }

// 8 consecutive values widened to fp32
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {  // bf16 is the high half of an fp32
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
inline __m256 load8(const c10::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

// e^x for 8 floats (Cephes' single-precision method: x = n ln2 + r, |r| <= ln2 / 2, a degree-5
// polynomial for e^r, 2^n from the exponent bits); within 2 ulp of expf over the clamped range.
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2 in two parts: exact n * hi
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// The CPU's VNNI integer dot products, where the build has them (AVX-512 VNNI with VL, or AVX-VNNI):
// 4 u8 x s8 products (dpbusd) or 2 s16 x s16 products (dpwssd) per 32-bit lane, added to it.
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define LMFORGE_DPBUSD _mm256_dpbusd_epi32
#define LMFORGE_DPWSSD _mm256_dpwssd_epi32
#elif defined(__AVXVNNI__)
#define LMFORGE_DPBUSD _mm256_dpbusd_avx_epi32
#define LMFORGE_DPWSSD _mm256_dpwssd_avx_epi32
#endif
#ifdef LMFORGE_DPBUSD
constexpr bool HAS_VNNI = true;
#else
constexpr bool HAS_VNNI = false;
#endif

// LMFORGE_ZMM (set by build.py where it pays, see lmforge/kernels/build.py): the grouped integer products
// in 512-bit vectors (AVX-512 BW + VNNI), two 256-bit vectors' worth per instruction. 1: every grouped
// tile (HAS_ZMM), for CPUs that execute 512-bit instructions at full width; 2: only the int16 products
// of two activation planes at several rows (HAS_ZMM_WIDE without HAS_ZMM), which pay with half-rate
// 512-bit units too, where the 256-bit tiles stay faster at one row.
#if defined(LMFORGE_ZMM) && LMFORGE_ZMM && defined(__AVX512BW__) && defined(__AVX512VNNI__)
constexpr bool HAS_ZMM = LMFORGE_ZMM == 1, HAS_ZMM_WIDE = true;
#else
constexpr bool HAS_ZMM = false, HAS_ZMM_WIDE = false;
#endif

// Zen 1 and Zen 2 issue one vector integer multiply a cycle (Zen 3 and later, and Intel's cores, two):
// there the tiles prefer the forms with fewer multiplies even at the cost of adds (see qact.h).
#if defined(__znver1__) || defined(__znver2__)
constexpr bool ONE_IMUL_PORT = true;
#else
constexpr bool ONE_IMUL_PORT = false;
#endif

// Dot products of 4 unsigned bytes u with 4 signed bytes s per 32-bit lane, added to acc: one VNNI
// instruction where the CPU has it, maddubs + madd otherwise (whose int16 pair sums must not
// saturate: |u s + u' s'| <= 32767, true for int4 codes and for |int8| <= 127 against int8).
inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#ifdef LMFORGE_DPBUSD
  return LMFORGE_DPBUSD(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

// Two such products added to acc, for int4 codes u (0..15) only: without VNNI the two int16 sums are
// added before widening (|sum| <= 4 * 15 * 128 stays in int16).
inline __m256i dot2_u4s8(__m256i acc, __m256i u0, __m256i s0, __m256i u1, __m256i s1) {
  if constexpr (HAS_VNNI) return dot_u8s8(dot_u8s8(acc, u0, s0), u1, s1);
  const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// Products of int16 pairs per 32-bit lane added to acc (VNNI where the CPU has it).
inline __m256i dot_s16(__m256i acc, __m256i a, __m256i b) {
#ifdef LMFORGE_DPWSSD
  return LMFORGE_DPWSSD(acc, a, b);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

// The block layouts of the quantized weights (see lmforge/kernels/__init__.py): where a row's bytes
// are and its per-group scales (and mins). The kernels add their own decoders of a block's codes.
constexpr int64_t QK = 32;  // columns per block
// The grouped layouts (int4, grouped int8) hold a row's first grouped_blocks(K) blocks in interleaved
// groups of GROUP (see lmforge/kernels/__init__.py), the rest as plain blocks.
constexpr int64_t GROUP = 8;
inline int64_t grouped_blocks(int64_t K) { return K / QK / GROUP * GROUP; }

// K-quant block scales (GGUF Q4_K at load): per 8 blocks of a row (a super-block) 8 uint8 multipliers q
// and the fp16 step d, 10 bytes; block i's scale (or min) is d * q[i % 8], exact in fp32. KScale is
// the scale type S of Int4Layout<KScale>, KScales its "pointer" to block i.
struct KScale {};
constexpr int64_t KSCALE_BYTES = 10;
struct KScales {
  const uint8_t* base = nullptr;
  int64_t i = 0;
  KScales operator+(int64_t n) const { return {base, i + n}; }
  float operator[](int64_t n) const {
    const int64_t j = i + n;
    const uint8_t* s = base + j / GROUP * KSCALE_BYTES;
    c10::Half d;
    std::memcpy(&d, s + GROUP, 2);
    return to_float(d) * static_cast<float>(s[j % GROUP]);
  }
  explicit operator bool() const { return base != nullptr; }
};
// the 8 scales of a whole super-block (i % 8 == 0, as the group tiles read them)
inline __m256 load8(const KScales& p) {
  const uint8_t* s = p.base + p.i / GROUP * KSCALE_BYTES;
  c10::Half d;
  std::memcpy(&d, s + GROUP, 2);
  const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s))));
  return _mm256_mul_ps(q, _mm256_set1_ps(to_float(d)));
}
// K-quant half-block scales (GGUF Q6_K at load; int8 only): KScales of one scale per 16 columns
// (G = 2 K/32), for the scale type S of Int8Layout<KHalfScale>. (Int8Layout<KScale> is the other K-quant
// int8 layout, one scale and one min per block: GGUF Q5_K.)
struct KHalfScale {};
template <typename S>
struct ScalePtr {
  using type = const S*;
};
template <>
struct ScalePtr<KScale> {
  using type = KScales;
};
template <>
struct ScalePtr<KHalfScale> {
  using type = KScales;
};

// int4: mins may be null (symmetric codes, GGUF Q4_0): then min = -8 * scale.
template <typename S>
struct Int4Layout {
  static constexpr bool HAS_MIN = true, HALF = false;
  static constexpr int64_t BLOCK_BYTES = QK / 2;
  const uint8_t* qs;
  typename ScalePtr<S>::type scales, mins;
  int64_t K, G;
  const uint8_t* row(int64_t r) const { return qs + r * (K / 2); }
  static constexpr int64_t GROUP_BYTES = GROUP * BLOCK_BYTES;
  int64_t grouped() const { return grouped_blocks(K); }
  float scale(int64_t r, int64_t g) const { return to_float(scales[r * G + g]); }
  float min(int64_t r, int64_t g) const { return mins ? to_float(mins[r * G + g]) : -8.f * scale(r, g); }
};

// int8: C = int8_t for the plain layout (column order), uint8_t for the grouped one (codes + 128, blocks
// 0 .. grouped() - 1 in interleaved groups of GROUP, the rest in column order). K-quant scales: S =
// KScale, a scale and a min per block (HAS_MIN: w = q * scale + min; GGUF Q5_K); S = KHalfScale, two
// scales per block (HALF; G = 2 K/32), columns 0-15 and 16-31 (GGUF Q6_K).
template <typename S, typename C = int8_t>
struct Int8Layout {
  static constexpr bool HAS_MIN = std::is_same_v<S, KScale>, HALF = std::is_same_v<S, KHalfScale>;
  static constexpr int64_t BLOCK_BYTES = QK;
  static constexpr int64_t GROUP_BYTES = GROUP * BLOCK_BYTES;
  const C* q;
  typename ScalePtr<S>::type scales;
  int64_t K, G;
  typename ScalePtr<S>::type mins{};  // HAS_MIN only
  const C* row(int64_t r) const { return q + r * K; }
  int64_t grouped() const { return std::is_same_v<C, uint8_t> ? grouped_blocks(K) : 0; }
  float scale(int64_t r, int64_t g) const { return to_float(scales[r * G + g]); }
  float min(int64_t r, int64_t g) const {
    if constexpr (HAS_MIN) return to_float(mins[r * G + g]);
    return 0.f;
  }
};

// fp32 decoders of the layouts (quant_linear.cpp's products at fp32 activations, and table rows): the 8
// integer codes (as fp32) of chunk c (columns 8c .. 8c + 7) of block b of row r. The dot product of a
// row with x is
//   sum_g scale[g] * (sum over the group of code * x)  +  sum_g min[g] * (sum over the group of x),
// so the inner loop only converts codes and multiplies them with x; the group sums of x are made once.
template <typename S>
struct Int4Codes : Int4Layout<S> {
  __m256 codes(int64_t r, int64_t b, int c) const {
    const uint8_t* row = this->row(r);
    __m128i v;
    if (b < this->grouped()) {  // 4 bytes of the group: columns 8c .. 8c + 3 low, 8c + 4 .. 8c + 7 high
      int32_t word;
      std::memcpy(&word, row + b / GROUP * this->GROUP_BYTES + c * 32 + b % GROUP * 4, 4);
      const __m128i raw = _mm_cvtsi32_si128(word);
      v = _mm_and_si128(_mm_unpacklo_epi32(raw, _mm_srli_epi16(raw, 4)), _mm_set1_epi8(0x0F));
    } else {  // chunks 0, 1: low nibbles of bytes 0-7, 8-15; chunks 2, 3: their high nibbles
      v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + b * this->BLOCK_BYTES + (c & 1) * 8));
      v = _mm_and_si128(c < 2 ? v : _mm_srli_epi16(v, 4), _mm_set1_epi8(0x0F));
    }
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
  }
};

template <typename S, typename C = int8_t>
struct Int8Codes : Int8Layout<S, C> {
  __m256 codes(int64_t r, int64_t b, int c) const {
    const C* row = this->row(r);
    __m128i v;
    if (b < this->grouped()) {  // columns 8c .. 8c + 7 of block j: lane j of the group's vectors 2c, 2c + 1
      const C* lane = row + b / GROUP * this->GROUP_BYTES + 2 * c * 32 + b % GROUP * 4;
      int32_t lo, hi;
      std::memcpy(&lo, lane, 4);
      std::memcpy(&hi, lane + 32, 4);
      v = _mm_unpacklo_epi32(_mm_cvtsi32_si128(lo), _mm_cvtsi32_si128(hi));
    } else {
      v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + b * this->BLOCK_BYTES + 8 * c));
    }
    if constexpr (std::is_same_v<C, uint8_t>) v = _mm_xor_si128(v, _mm_set1_epi8(-128));  // back to int8
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
  }
};

// out [K] = row r of a quantized table in fp32 (an embedding lookup): w = q * scale + min, a product and
// then a sum as in reference.dequantize_*_blocks, so that the row is bit-identical to it.
template <typename Codes>
inline void decode_row(const Codes& w, int64_t r, float* out) {
  const int64_t cpg = w.K / 8 / w.G;  // chunks of 8 columns per group: 4 per block, or 2 (half blocks)
  for (int64_t b = 0; b < w.K / QK; ++b) {
    for (int c = 0; c < 4; ++c) {
      const int64_t g = (4 * b + c) / cpg;
      const __m256 scale = _mm256_set1_ps(w.scale(r, g)), min = _mm256_set1_ps(w.min(r, g));
      __m256 v = _mm256_mul_ps(w.codes(r, b, c), scale);
      if constexpr (Codes::HAS_MIN) v = _mm256_add_ps(v, min);
      _mm256_storeu_ps(out + b * QK + 8 * c, v);
    }
  }
}

// Tiles t0 .. t1 - 1 of R rows of an N-row weight: tile(n0, R_tag) for every full tile, tile(n, 1_tag) for
// each row left over, where the tag is a std::integral_constant so that the callee can use the row count
// as a template argument.
template <int R, typename Tile>
inline void for_tiles(int64_t N, int64_t t0, int64_t t1, Tile& tile) {
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n0 = t * R;
    if (n0 + R <= N) {
      tile(n0, std::integral_constant<int, R>{});
    } else {
      for (int64_t n = n0; n < N; ++n) tile(n, std::integral_constant<int, 1>{});
    }
  }
}

// The tiles of an N-row weight spread over the threads (about 16 KiB of weights per task).
template <int R, typename Tile>
void parallel_tiles(int64_t N, int64_t bytes_per_row, Tile tile) {
  const int64_t tiles = (N + R - 1) / R;
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / (R * bytes_per_row));
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) { for_tiles<R>(N, t0, t1, tile); });
}

}  // namespace lmforge_simd
