// Integer products on Intel's AMX tiles (Sapphire Rapids on), for prompts (from MIN_ROWS rows of x on).
// The rounding of the activations and the weight layouts are those of qact.h; only
// the multiplication differs, and its integer sums are exact, so the results equal the vector tiles'
// up to the fp32 summation order.
//
// One tile product multiplies 16 weight rows by the activation rows of a pass over one scale block (32
// columns, or 16 with half-block scales): A = the weights' codes [16 rows, block columns] as int8, B = the
// activations' codes in the tile's 4-byte row format [block columns / 4, 4 x columns], where a column is
// an activation row's plane a (or, with two planes, its plane b), and C [16, columns] int32 = their dot
// products (tdpbssd, signed x signed). Per pass up to 16 columns: 16 rows with one plane, 8 with two.
//
// The tiles need their codes in column order, which the grouped layouts interleave (see qact.h):
//   - A: per tile of 16 weight rows, each row's codes are written out in column order once (int4
//     nibbles widened, grouped int8 shifted back to int8, the interleaved groups transposed with two
//     rounds of 512-bit permutes), with the rows' block scales and mins side by side per block; every
//     pass of activation rows then reuses them;
//   - B: the activation rows' codes transposed into tile rows once per call (8 x 8 transposes).
// Per block the C tile goes to memory (the block scales differ per weight row and block, so that no tile
// sums more than one block), and the epilogue adds scale * d * C into fp32 accumulators that hold C's
// [16, columns] in order, 16 / columns weight rows a vector, so that a weight row's scale reaches its
// lanes with one permute; min * the activation's block sums go in after the blocks.
//
// What it costs (an Emerald Rapids VM, TSC cycles per block of 16 weight rows at 16 columns): the C
// tile's store is the bottleneck, ~30 of the ~50 a block takes, the product itself ~11. A pass of 4
// rows of x pays most of that too, where the vector tiles cost less: the tiles start at MIN_ROWS.
//
// Linux gives a process the tiles' 8 KiB of state only when it asks (arch_prctl ARCH_REQ_XCOMP_PERM);
// available() asks once. LMFORGE_KERNEL_AMX=0 turns the tiles off (the vector tiles of qact.h run).
#pragma once

#include "qact.h"

#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512F__) && defined(__AVX512BW__)
#define LMFORGE_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#else
#define LMFORGE_AMX 0
#endif

namespace lmforge_amx {

using namespace lmforge_qact;

// Whether this process multiplies on the tiles: a build with AMX, LMFORGE_KERNEL_AMX not "0", and the
// kernel's grant of the tile state.
inline bool available() {
#if LMFORGE_AMX
  static const bool ok = [] {
    const char* env = std::getenv("LMFORGE_KERNEL_AMX");
    if (env && std::strcmp(env, "0") == 0) return false;
    constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

// Rows of x from which the products take the tiles (fewer: the vector tiles, which were as fast or
// faster at 5 and 8 rows; from 16 rows on the tiles won on most shapes, and prompts of 128 and 512
// tokens ran 1.5-1.9x as fast end to end: benchmarks/RESULTS.md, an Emerald Rapids VM).
constexpr int64_t MIN_ROWS = 16;

#if LMFORGE_AMX

constexpr int TILE_ROWS = 16;  // weight rows per tile

// columns of scale per block: 32, or 16 with half-block scales
template <typename Rows>
constexpr int scale_block() {
  return Rows::HALF ? 16 : static_cast<int>(QK);
}

// Activation rows per pass, and the tile columns a pass of mr rows takes (a power of two, so that the
// accumulators' lanes repeat the same columns in every vector).
inline int64_t pass_rows(bool two) { return two ? 8 : 16; }
inline int pass_cols(int64_t mr, bool two) {
  int c = 1;
  while (c < (two ? 2 : 1) * mr) c *= 2;
  return c;
}

struct TileConfig {
  uint8_t palette = 1, start = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0 and 4: weights, 1 and 5: activations, 2 and 3: sums (two of each, so that one block's
// product can start before the previous one's sums are stored).
inline void configure(int sbw, int cols) {
  TileConfig c;
  for (int t : {0, 4}) {
    c.rows[t] = TILE_ROWS;
    c.colsb[t] = static_cast<uint16_t>(sbw);
  }
  for (int t : {1, 5}) {
    c.rows[t] = static_cast<uint8_t>(sbw / 4);
    c.colsb[t] = static_cast<uint16_t>(4 * cols);
  }
  for (int t : {2, 3}) {
    c.rows[t] = TILE_ROWS;
    c.colsb[t] = static_cast<uint16_t>(4 * cols);
  }
  _tile_loadconfig(&c);
}

// ------------------------------------------------------------------------------ activation tiles

// Bytes of one pass's activation tiles for K columns: a tile row of 64 bytes per 4 columns.
inline int64_t act_bytes(int64_t K) { return K / 4 * 64; }

// The activation tiles of rows xr[0 .. mr) (one pass): tile row 8 blk + i holds chunk i (columns 4i ..
// 4i + 3) of block blk for every column k of the pass: plane a of row k (k < mr), plane b of row k - mr
// (two planes), zero up to 8 or 16 columns. A scale block sb of sbw columns is then the sbw / 4 rows
// from sb * sbw / 4 on. `grouped`: the blocks whose codes round_row interleaved (the weight's layout).
inline void act_tiles(const QRow* xr, int64_t mr, bool two, int64_t K, int64_t grouped, int8_t* out) {
  const int64_t used = (two ? 2 : 1) * mr, nb = K / QK;
  auto codes = [&](int64_t k) -> const int8_t* { return k < mr ? xr[k].a : xr[k - mr].b; };
  for (int64_t k0 = 0; k0 < used; k0 += 8) {
    const int64_t kn = std::min<int64_t>(8, used - k0);
    for (int64_t blk = 0; blk < nb;) {
      if (blk < grouped) {  // vector i of a group: lane j is chunk i of block blk + j
        for (int i = 0; i < 8; ++i) {
          __m256i r[8];
          for (int k = 0; k < 8; ++k)
            r[k] = k < kn ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes(k0 + k) + blk * QK + 32 * i))
                          : _mm256_setzero_si256();
          transpose8(r);  // r[j] lane k: chunk i of block blk + j, column k0 + k
          for (int j = 0; j < 8; ++j)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + ((blk + j) * 8 + i) * 64 + 4 * k0), r[j]);
        }
        blk += GROUP;
      } else {  // a plain block in column order: lane i is chunk i
        __m256i r[8];
        for (int k = 0; k < 8; ++k)
          r[k] = k < kn ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes(k0 + k) + blk * QK))
                        : _mm256_setzero_si256();
        transpose8(r);
        for (int i = 0; i < 8; ++i)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (blk * 8 + i) * 64 + 4 * k0), r[i]);
        ++blk;
      }
    }
  }
}

// --------------------------------------------------------------------------------- weight tiles

// Whether a layout is int4 (two codes a byte) rather than int8.
template <typename Rows>
constexpr bool is_int4() {
  return Rows::BLOCK_BYTES == QK / 2;
}

// A row's interleaved group (8 blocks) as the 4 vectors of its 64 dword lanes, in the two orders the
// layouts give: grouped int8 holds vector i's lane j (chunk i of block j) at dword 8 (i % 2) + j of
// z[i / 2]; int4 holds it at dword 8 ((i / 2) % 2) + j of z[2 (i / 4) + i % 2] (low and high nibbles).
template <typename Rows, typename C>
__attribute__((always_inline)) inline void load_group(const C* g, __m512i (&z)[4]) {
  if constexpr (is_int4<Rows>()) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    const __m512i p01 = _mm512_loadu_si512(g), p23 = _mm512_loadu_si512(g + 64);
    z[0] = _mm512_and_si512(p01, low);
    z[1] = _mm512_and_si512(_mm512_srli_epi16(p01, 4), low);
    z[2] = _mm512_and_si512(p23, low);
    z[3] = _mm512_and_si512(_mm512_srli_epi16(p23, 4), low);
  } else {
    for (int t = 0; t < 4; ++t) {
      z[t] = _mm512_loadu_si512(g + 64 * t);
      if constexpr (std::is_same_v<C, uint8_t>) z[t] = _mm512_xor_si512(z[t], _mm512_set1_epi8(-128));
    }
  }
}

// The permutes that put a group in column order (block j's chunks 0..7, blocks 0..7): round one takes
// chunks 0-3 (from z[0], z[1]) or 4-7 (z[2], z[3]) of blocks 4q .. 4q + 3 to dword 4 (j - 4q) + i; round
// two joins them per pair of blocks.
struct GroupOrder {
  __m512i first[2], second[2];
  explicit GroupOrder(bool int4) {
    alignas(64) int32_t f[2][16], s[2][16];
    for (int q = 0; q < 2; ++q)
      for (int jj = 0; jj < 4; ++jj)
        for (int i = 0; i < 4; ++i) {
          const int j = 4 * q + jj;
          f[q][4 * jj + i] = int4 ? (i % 2) * 16 + 8 * (i / 2) + j : (i / 2) * 16 + 8 * (i % 2) + j;
        }
    for (int half = 0; half < 2; ++half)
      for (int h = 0; h < 2; ++h)
        for (int i = 0; i < 8; ++i) {
          const int jj = 2 * half + h;
          s[half][8 * h + i] = i < 4 ? 4 * jj + i : 16 + 4 * jj + i - 4;
        }
    for (int q = 0; q < 2; ++q) {
      first[q] = _mm512_load_si512(f[q]);
      second[q] = _mm512_load_si512(s[q]);
    }
  }
};

// A plain block's 32 codes in column order as int8
template <typename Rows, typename C>
__attribute__((always_inline)) inline __m256i plain_block(const C* b) {
  if constexpr (is_int4<Rows>()) {  // low nibbles: columns 0-15, high: 16-31
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
  } else {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
    return std::is_same_v<C, uint8_t> ? _mm256_xor_si256(v, _mm256_set1_epi8(-128)) : v;
  }
}

// What a tile of 16 weight rows keeps for its passes: the rows' codes [16, K] in column order, and per
// scale block the 16 rows' scales and mins side by side.
struct WeightTile {
  AlignedVector<int8_t> codes;
  AlignedVector<float> scale, min;
};

template <typename Rows>
void load_tile(const Rows& w, int64_t N, int64_t n0, WeightTile& t) {
  constexpr int SBW = scale_block<Rows>();
  const int64_t K = w.K, nb = K / QK, nsb = K / SBW, grouped = w.grouped();
  t.codes.resize(TILE_ROWS * K);
  t.scale.resize(nsb * TILE_ROWS + 16);
  t.min.resize(nsb * TILE_ROWS + 16);
  static const GroupOrder order(is_int4<Rows>());
  for (int r = 0; r < TILE_ROWS; ++r) {
    const auto* row = w.row(n0 + r);
    int8_t* out = t.codes.data() + r * K;
    for (int64_t g = 0; g < grouped / GROUP; ++g) {
      __m512i z[4];
      load_group<Rows>(row + g * Rows::GROUP_BYTES, z);
      for (int q = 0; q < 2; ++q) {
        const __m512i lo = _mm512_permutex2var_epi32(z[0], order.first[q], z[1]);  // chunks 0-3
        const __m512i hi = _mm512_permutex2var_epi32(z[2], order.first[q], z[3]);  // chunks 4-7
        for (int half = 0; half < 2; ++half)
          _mm512_storeu_si512(out + g * 256 + 64 * (2 * q + half), _mm512_permutex2var_epi32(lo, order.second[half], hi));
      }
    }
    for (int64_t blk = grouped; blk < nb; ++blk)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + blk * QK), plain_block<Rows>(row + blk * Rows::BLOCK_BYTES));
  }
  // scales (and mins) per scale block, 8 weight rows x 8 scale blocks at a time through a transpose
  const int64_t bpg = Rows::HALF ? 0 : nb / w.G;
  constexpr int PER = Rows::HALF ? 2 : 1;  // scale blocks per block
  for (int64_t b0 = 0; b0 < nb; b0 += 8) {
    const int64_t n = std::min<int64_t>(8, nb - b0);
    for (int r0 = 0; r0 < TILE_ROWS; r0 += 8) {
      __m256i s[PER][8], m[8];
      for (int r = 0; r < 8; ++r) {
        alignas(32) float ws[16], wm[8] = {};
        block_params(w, N, n0 + r0 + r, b0, n, bpg, ws, wm);
        for (int h = 0; h < PER; ++h) s[h][r] = _mm256_castps_si256(_mm256_load_ps(ws + 8 * h));
        m[r] = _mm256_castps_si256(_mm256_load_ps(wm));
      }
      for (int h = 0; h < PER; ++h) {
        transpose8(s[h]);  // s[h][j]: scale block PER b0 + 8h + j of the 8 rows
        for (int j = 0; j < 8 && PER * b0 + 8 * h + j < nsb; ++j)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(t.scale.data() + (PER * b0 + 8 * h + j) * TILE_ROWS + r0), s[h][j]);
      }
      if constexpr (Rows::HAS_MIN) {
        transpose8(m);
        for (int j = 0; j < n; ++j)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(t.min.data() + (b0 + j) * TILE_ROWS + r0), m[j]);
      }
    }
  }
}

// out [16, COLS] = sum over the scale blocks of scale * d * C for one pass: per block one product of
// the 16 weight rows' codes with the pass's activation tiles, two blocks at a time on alternate tiles,
// their C tiles stored to a ring that the epilogue of the previous pair reads meanwhile (in L1, and the
// vector work overlaps the tiles'). Vector q of a block's C holds weight rows q * 16 / COLS .. (all
// columns each): its lanes take their row's scale by a permute (with 16 columns, one row a vector: a
// broadcast).
template <int COLS, int SBW>
inline void pass_sums(const int8_t* codes, int64_t K, const int8_t* act, const float* scale, const float* act_scales,
                      float* out) {
  constexpr int ROWS_PER = 16 / COLS;
  const int64_t nsb = K / SBW;
  __m512i row_of[COLS];
  UNROLL for (int q = 0; q < COLS; ++q) {
    alignas(64) int32_t idx[16];
    for (int l = 0; l < 16; ++l) idx[l] = q * ROWS_PER + l / COLS;
    row_of[q] = _mm512_load_si512(idx);
  }
  __m512 acc[COLS];
  UNROLL for (int q = 0; q < COLS; ++q) acc[q] = _mm512_setzero_ps();
  auto add = [&](const int32_t* c, int64_t sb) __attribute__((always_inline)) {
    const __m512 d = _mm512_load_ps(act_scales + 16 * sb);
    const float* s = scale + sb * TILE_ROWS;
    UNROLL for (int q = 0; q < COLS; ++q) {
      const __m512 sq = COLS == 16 ? _mm512_set1_ps(s[q]) : _mm512_permutexvar_ps(row_of[q], _mm512_loadu_ps(s));
      acc[q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * q)), _mm512_mul_ps(sq, d), acc[q]);
    }
  };
  alignas(64) int32_t ring[2][2][16 * COLS];
  int64_t sb = 0;
  int slot = 0;
  for (; sb + 2 <= nsb; sb += 2, slot ^= 1) {
    _tile_loadd(0, codes + sb * SBW, K);
    _tile_loadd(1, act + sb * SBW * 16, 64);
    _tile_loadd(4, codes + (sb + 1) * SBW, K);
    _tile_loadd(5, act + (sb + 1) * SBW * 16, 64);
    _tile_zero(2);
    _tile_zero(3);
    _tile_dpbssd(2, 0, 1);
    _tile_dpbssd(3, 4, 5);
    _tile_stored(2, ring[slot][0], 4 * COLS);
    _tile_stored(3, ring[slot][1], 4 * COLS);
    if (sb >= 2) {
      add(ring[slot ^ 1][0], sb - 2);
      add(ring[slot ^ 1][1], sb - 1);
    }
  }
  if (sb >= 2) {  // the last pair
    add(ring[slot ^ 1][0], sb - 2);
    add(ring[slot ^ 1][1], sb - 1);
  }
  if (sb < nsb) {  // an odd block left
    _tile_loadd(0, codes + sb * SBW, K);
    _tile_loadd(1, act + sb * SBW * 16, 64);
    _tile_zero(2);
    _tile_dpbssd(2, 0, 1);
    _tile_stored(2, ring[slot][0], 4 * COLS);
    add(ring[slot][0], sb);
  }
  UNROLL for (int q = 0; q < COLS; ++q) _mm512_storeu_ps(out + 16 * q, acc[q]);
}

// y[m * ldy + n0 + r] (r < 16) for one pass of mr activation rows xr (tiles `act`, see act_tiles; the
// tiles configured for its columns).
template <typename Rows>
void tile_pass(const Rows& w, int64_t n0, WeightTile& t, const QRow* xr, int64_t mr, bool two, const int8_t* act,
               const float* act_scales, float* y, int64_t ldy) {
  constexpr int SBW = scale_block<Rows>();
  const int64_t K = w.K, nb = K / QK;
  const int cols = pass_cols(mr, two);
  alignas(64) float out[16 * 16];
  const int8_t* codes = t.codes.data();
  const float* scale = t.scale.data();
  switch (cols) {
    case 1: pass_sums<1, SBW>(codes, K, act, scale, act_scales, out); break;
    case 2: pass_sums<2, SBW>(codes, K, act, scale, act_scales, out); break;
    case 4: pass_sums<4, SBW>(codes, K, act, scale, act_scales, out); break;
    case 8: pass_sums<8, SBW>(codes, K, act, scale, act_scales, out); break;
    default: pass_sums<16, SBW>(codes, K, act, scale, act_scales, out); break;
  }
  // the mins' part, min * the activation's block sum, 4 activation rows at a time
  alignas(64) float mins[16][16];
  for (int64_t m0 = 0; m0 < mr; m0 += 4) {
    __m512 v[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    if constexpr (Rows::HAS_MIN) {
      const float* x[4];
      for (int j = 0; j < 4; ++j) x[j] = xr[std::min<int64_t>(m0 + j, mr - 1)].sums;
      for (int64_t b = 0; b < nb; ++b) {
        const __m512 mn = _mm512_loadu_ps(t.min.data() + b * TILE_ROWS);
        UNROLL for (int j = 0; j < 4; ++j) v[j] = _mm512_fmadd_ps(mn, _mm512_set1_ps(x[j][b]), v[j]);
      }
    }
    for (int j = 0; j < 4 && m0 + j < mr; ++j) _mm512_store_ps(mins[m0 + j], v[j]);
  }
  for (int64_t m = 0; m < mr; ++m) {
    float* ym = y + m * ldy + n0;
    for (int r = 0; r < TILE_ROWS; ++r)
      ym[r] = out[r * cols + m] + (two ? out[r * cols + mr + m] : 0.f) + mins[m][r];
  }
}

// What a call's activation rows give every weight tile, per pass of pass_rows: the tiles (act_tiles),
// and per scale block the columns' activation scales repeated every `cols` lanes, 16 floats (with two
// planes 254 d for plane a, d for b: x = d (254 a + b)).
struct ActPasses {
  AlignedVector<int8_t> tiles;
  AlignedVector<float> scales;
  int64_t K = 0, nsb = 0;
  const int8_t* tiles_of(int64_t p) const { return tiles.data() + p * act_bytes(K); }
  const float* scales_of(int64_t p) const { return scales.data() + p * nsb * 16; }

  // the passes spread over ATen's threads
  void build(const QRow* xr, int64_t M, bool two, int64_t K_, int64_t grouped, int sbw) {
    K = K_;
    nsb = K / sbw;
    const int64_t per = pass_rows(two), passes = (M + per - 1) / per, per_block = QK / sbw;
    tiles.resize(passes * act_bytes(K));
    scales.resize(passes * nsb * 16);
    auto make = [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const QRow* x = xr + p * per;
        const int64_t mr = std::min(per, M - p * per);
        const int cols = pass_cols(mr, two);
        act_tiles(x, mr, two, K, grouped, tiles.data() + p * act_bytes(K));
        float* dd = scales.data() + p * nsb * 16;
        for (int64_t sb = 0; sb < nsb; ++sb)
          for (int l = 0; l < 16; ++l) {
            const int64_t k = l % cols, blk = sb / per_block;
            dd[16 * sb + l] = k < mr ? x[k].d[blk] * (two ? 254.f : 1.f) : (two && k < 2 * mr ? x[k - mr].d[blk] : 0.f);
          }
      }
    };
    at::parallel_for(0, passes, 1, make);
  }
};

// Thread-local room for a weight tile, and the tile configuration loaded.
struct Scratch {
  WeightTile tile;
  int sbw = 0, cols = 0;  // the tile configuration loaded (0: none)
};
inline Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Loads the tile configuration for sbw and cols unless it is the one loaded.
inline void use_config(int sbw, int cols) {
  Scratch& s = scratch();
  if (s.sbw == sbw && s.cols == cols) return;
  configure(sbw, cols);
  s.sbw = sbw;
  s.cols = cols;
}

// Gives the tile state back (when a thread's products are done).
inline void release() {
  _tile_release();
  scratch().sbw = scratch().cols = 0;
}

// y [M, ldy] columns n0 .. n0 + 15 for all M rows, pass after pass. Configures the tiles as the passes
// need; the caller releases them (release()) when its tiles are done.
template <typename Rows>
void multiply_tile(const Rows& w, int64_t N, int64_t n0, const QRow* xr, int64_t M, bool two, const ActPasses& act,
                   float* y, int64_t ldy) {
  WeightTile& t = scratch().tile;
  load_tile(w, N, n0, t);
  const int64_t per = pass_rows(two);
  for (int64_t m0 = 0, p = 0; m0 < M; m0 += per, ++p) {
    const int64_t mr = std::min(per, M - m0);
    use_config(scale_block<Rows>(), pass_cols(mr, two));
    tile_pass(w, n0, t, xr + m0, mr, two, act.tiles_of(p), act.scales_of(p), y + m0 * ldy, ldy);
  }
}

#endif  // LMFORGE_AMX

}  // namespace lmforge_amx
