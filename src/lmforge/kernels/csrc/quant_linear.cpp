// Quantized-weight linear layers for x86 CPUs with AVX2 + FMA + F16C (AVX-VNNI / AVX512-VNNI when the
// compiler targets them): y [M, N] = x [M, K] @ W.T with W in 32-column blocks.
//
// The activation row is quantized on the fly to int8 per 32-column block (scale d = absmax / 127), and
// each block's dot product with a weight block is computed in int32 (u8 x s8 multiply-adds), then scaled
// in fp32. See lmforge/kernels/__init__.py for the weight layouts and reference.py for the exact math.
//
//   int4: qs uint8 [N, K/2], block b of row n in bytes [16b, 16b + 16): byte j holds column 32b + j in its
//         low nibble and column 32b + 16 + j in its high nibble (GGUF Q4_0/Q4_1 order);
//         scales, mins fp16 or fp32 [N, G]: w = q * scale + min, groups of K/G columns (a multiple of 32).
//   int8: q int8 [N, K]; scales fp16 or fp32 [N, G]: w = q * scale.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace {

constexpr int64_t QK = 32;  // columns per block
constexpr int NR = 4;       // weight rows per micro-kernel call
constexpr int64_t GEMM_MIN_ROWS = 32;  // from this many activation rows on, dequantize and use ATen's GEMM

// ---------------------------------------------------------------------------------- small helpers

inline float to_float(float v) { return v; }
inline float to_float(at::Half v) { return _cvtsh_ss(v.x); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 int32 sums of 4 products each of unsigned bytes u and signed bytes s.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// 32 values 0..15 from the 16 bytes of one int4 block, in column order.
inline __m256i unpack_nibbles(const uint8_t* p) {
  const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i shifted = _mm256_srlv_epi64(both, _mm256_setr_epi64x(0, 0, 4, 4));  // high lane: high nibbles
  return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
}

// ------------------------------------------------------------------------- activation quantization

// x [K] -> q int8 [K], d [K/32] (block scales), sg [G] (per group of bpg blocks: sum of d * code).
void quantize_row(const float* x, int64_t K, int64_t bpg, int8_t* q, float* d, float* sg) {
  std::fill(sg, sg + K / QK / bpg, 0.f);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < K / QK; ++b) {
    const float* xb = x + b * QK;
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(xb + 8 * i);
      amax = _mm256_max_ps(amax, _mm256_and_ps(v[i], abs_mask));
    }
    const float m = hmax(amax);
    const float inv = m > 0.f ? 127.f / m : 0.f;
    __m256i iv[4];
    __m256i isum = _mm256_setzero_si256();
    for (int i = 0; i < 4; ++i) {
      const __m256 r = _mm256_round_ps(_mm256_mul_ps(v[i], _mm256_set1_ps(inv)),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      iv[i] = _mm256_cvtps_epi32(r);
      isum = _mm256_add_epi32(isum, iv[i]);
    }
    // pack 4 x 8 int32 -> 32 int8; the packs interleave 128-bit lanes, the permute restores the order
    const __m256i p16 = _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * QK), _mm256_permutevar8x32_epi32(p16, order));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(isum), _mm256_extracti128_si256(isum, 1));
    s = _mm_hadd_epi32(s, s);
    s = _mm_hadd_epi32(s, s);
    d[b] = m / 127.f;
    sg[b / bpg] += d[b] * static_cast<float>(_mm_cvtsi128_si32(s));
  }
}

struct QuantizedRows {  // x [M, K] quantized per 32-column block
  at::Tensor q, d, sg;  // int8 [M, K], fp32 [M, K/32], fp32 [M, G]
};

QuantizedRows quantize_rows(const at::Tensor& x, int64_t G) {
  const int64_t M = x.size(0), K = x.size(1);
  QuantizedRows r{at::empty({M, K}, x.options().dtype(at::kChar)), at::empty({M, K / QK}, x.options()),
                  at::empty({M, G}, x.options())};
  const float* xp = x.data_ptr<float>();
  int8_t* qp = r.q.data_ptr<int8_t>();
  float* dp = r.d.data_ptr<float>();
  float* sgp = r.sg.data_ptr<float>();
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / K), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      quantize_row(xp + m * K, K, K / G / QK, qp + m * K, dp + m * (K / QK), sgp + m * G);
  });
  return r;
}

// sum_g a[g] * b[g]
template <typename S>
float dot_groups(const S* a, const float* b, int64_t G) {
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= G; g += 8) {
    __m256 av;
    if constexpr (std::is_same_v<S, float>) {
      av = _mm256_loadu_ps(a + g);
    } else {
      av = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + g)));
    }
    acc = _mm256_fmadd_ps(av, _mm256_loadu_ps(b + g), acc);
  }
  float sum = hsum(acc);
  for (; g < G; ++g) sum += to_float(a[g]) * b[g];
  return sum;
}

// -------------------------------------------------------------------------------- micro-kernels

// One activation row (codes xq, block scales xd) against R weight rows with scales [R, G]:
// acc[r] lanes sum to sum_b scale[r, b / bpg] * xd[b] * (integer dot of block b), where block_dot(r, b, xv)
// gives the 8 int32 partial sums of weight row r's block b with the activation codes xv.
template <int R, typename S, typename BlockDot>
void scaled_block_dots(BlockDot block_dot, const S* scales, int64_t G, int64_t bpg, const int8_t* xq,
                       const float* xd, __m256 acc[R]) {
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  if (bpg == 1) {  // one scale per block (GGUF): fold it into the activation's block scale
    for (int64_t b = 0; b < G; ++b) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * QK));
      for (int r = 0; r < R; ++r) {
        const __m256 scale = _mm256_set1_ps(to_float(scales[r * G + b]) * xd[b]);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot(r, b, xv)), scale, acc[r]);
      }
    }
    return;
  }
  for (int64_t g = 0; g < G; ++g) {
    __m256 gacc[R];
    for (int r = 0; r < R; ++r) gacc[r] = _mm256_setzero_ps();
    for (int64_t b = g * bpg; b < (g + 1) * bpg; ++b) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * QK));
      const __m256 dx = _mm256_set1_ps(xd[b]);
      for (int r = 0; r < R; ++r) gacc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot(r, b, xv)), dx, gacc[r]);
    }
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(to_float(scales[r * G + g])), gacc[r], acc[r]);
  }
}

// out[r] = sum_k w[r, k] * xq[k] * xd[k / 32] for R int4 rows; xg: the activation's per-group sums.
template <int R, typename S>
void int4_dot(const uint8_t* qs, const S* scales, const S* mins, int64_t K, int64_t G, const int8_t* xq,
              const float* xd, const float* xg, float* out) {
  const int64_t ldq = K / 2;
  auto block_dot = [&](int r, int64_t b, __m256i xv) {
    return dot_u8s8(unpack_nibbles(qs + r * ldq + b * (QK / 2)), xv);
  };
  __m256 acc[R];
  scaled_block_dots<R>(block_dot, scales, G, K / G / QK, xq, xd, acc);
  // the mins' share: sum_g min[r, g] * (sum of the group's activation values)
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]) + dot_groups(mins + r * G, xg, G);
}

// out[r] = sum_k w[r, k] * xq[k] * xd[k / 32] for R int8 rows.
template <int R, typename S>
void int8_dot(const int8_t* q, const S* scales, int64_t K, int64_t G, const int8_t* xq, const float* xd,
              const float* /*xg*/, float* out) {
  auto block_dot = [&](int r, int64_t b, __m256i xv) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + r * K + b * QK));
    // u8 x s8 products need an unsigned operand: |w| times x carrying w's sign
    return dot_u8s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w));
  };
  __m256 acc[R];
  scaled_block_dots<R>(block_dot, scales, G, K / G / QK, xq, xd, acc);
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
}

// ------------------------------------------------------------------------------------ drivers

void check_common(const at::Tensor& x, const at::Tensor& scales, int64_t N, int64_t K, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be on the CPU");
  TORCH_CHECK(x.is_floating_point(), op, ": x must be a floating-point tensor");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, op, ": x has ", x.size(-1), " features, the weight ", K);
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == N, op, ": scales must be [N, G]");
  TORCH_CHECK(scales.scalar_type() == at::kHalf || scales.scalar_type() == at::kFloat, op,
              ": scales must be float16 or float32");
  const int64_t G = scales.size(1);
  TORCH_CHECK(G > 0 && K % G == 0 && (K / G) % QK == 0, op, ": the group size K/G must be a multiple of 32");
}

at::Tensor output_like(const at::Tensor& x, const at::Tensor& y2, int64_t N) {
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y2.view(shape).to(x.scalar_type());
}

// y [M, N] from the quantized activation and a row kernel: tiles of NR weight rows over threads, each
// tile against every activation row (its weights stay in cache: each weight byte is read once per call).
template <typename RowKernel, typename TailKernel>
at::Tensor run_tiles(const QuantizedRows& xq, int64_t N, int64_t G, int64_t bytes_per_row, RowKernel tile,
                     TailKernel tail) {
  const int64_t M = xq.q.size(0), K = xq.q.size(1);
  at::Tensor y = at::empty({M, N}, xq.d.options());
  const int8_t* qp = xq.q.data_ptr<int8_t>();
  const float* dp = xq.d.data_ptr<float>();
  const float* sgp = xq.sg.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t tiles = (N + NR - 1) / NR;
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(1, bytes_per_row * NR * M));
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    float out[NR];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * NR, rows = std::min<int64_t>(NR, N - n0);
      for (int64_t m = 0; m < M; ++m) {
        const int8_t* xqm = qp + m * K;
        const float *xdm = dp + m * (K / QK), *xgm = sgp + m * G;
        if (rows == NR) {
          tile(n0, xqm, xdm, xgm, out);
        } else {
          for (int64_t r = 0; r < rows; ++r) tail(n0 + r, xqm, xdm, xgm, out + r);
        }
        for (int64_t r = 0; r < rows; ++r) yp[m * N + n0 + r] = out[r];
      }
    }
  });
  return y;
}

// y [M, N] = (the quantized activation, as fp32) @ W.T with W dequantized DEQUANT_ROWS rows at a time into
// fp32 and multiplied by ATen's GEMM: for many activation rows, its fp32 GEMM outruns the integer dots.
template <typename DequantRow>
at::Tensor run_dequantized(const QuantizedRows& xq, int64_t N, DequantRow dequant_row) {
  constexpr int64_t DEQUANT_ROWS = 256;
  const int64_t M = xq.q.size(0), K = xq.q.size(1);
  const at::Tensor x = (xq.q.to(at::kFloat).view({M, K / QK, QK}) * xq.d.unsqueeze(-1)).view({M, K});
  at::Tensor y = at::empty({M, N}, x.options());
  at::Tensor w = at::empty({std::min(N, DEQUANT_ROWS), K}, x.options());
  float* wp = w.data_ptr<float>();
  for (int64_t n0 = 0; n0 < N; n0 += DEQUANT_ROWS) {
    const int64_t rows = std::min(DEQUANT_ROWS, N - n0);
    at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) dequant_row(n0 + r, wp + r * K);
    });
    y.narrow(1, n0, rows).copy_(at::mm(x, w.narrow(0, 0, rows).t()));
  }
  return y;
}

// The op's driver: quantize x, then integer dots for few rows, dequantized GEMM for many.
template <typename RowKernel, typename TailKernel, typename DequantRow>
at::Tensor quantized_linear(const at::Tensor& x, int64_t N, int64_t G, int64_t bytes_per_row, RowKernel tile,
                            TailKernel tail, DequantRow dequant_row) {
  const at::Tensor x2 = x.reshape({-1, x.size(-1)}).to(at::kFloat).contiguous();
  const QuantizedRows xq = quantize_rows(x2, G);
  const at::Tensor y = x2.size(0) >= GEMM_MIN_ROWS ? run_dequantized(xq, N, dequant_row)
                                                   : run_tiles(xq, N, G, bytes_per_row, tile, tail);
  return output_like(x, y, N);
}

template <typename S>
at::Tensor int4_linear_typed(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
                             const at::Tensor& mins) {
  const int64_t N = qs.size(0), K = qs.size(1) * 2, G = scales.size(1);
  const uint8_t* q = qs.data_ptr<uint8_t>();
  const S* s = scales.data_ptr<S>();
  const S* mn = mins.data_ptr<S>();
  auto tile = [&](int64_t n, const int8_t* xq, const float* xd, const float* xg, float* out) {
    int4_dot<NR, S>(q + n * (K / 2), s + n * G, mn + n * G, K, G, xq, xd, xg, out);
  };
  auto tail = [&](int64_t n, const int8_t* xq, const float* xd, const float* xg, float* out) {
    int4_dot<1, S>(q + n * (K / 2), s + n * G, mn + n * G, K, G, xq, xd, xg, out);
  };
  auto dequant_row = [&](int64_t n, float* w) {
    for (int64_t b = 0; b < K / QK; ++b) {
      const int64_t g = b * QK * G / K;
      const __m256 scale = _mm256_set1_ps(to_float(s[n * G + g])), min = _mm256_set1_ps(to_float(mn[n * G + g]));
      const __m256i codes = unpack_nibbles(q + n * (K / 2) + b * (QK / 2));
      for (int i = 0; i < 4; ++i) {
        const __m128i c8 = i < 2 ? _mm256_castsi256_si128(codes) : _mm256_extracti128_si256(codes, 1);
        const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(i % 2 ? _mm_srli_si128(c8, 8) : c8));
        _mm256_storeu_ps(w + b * QK + 8 * i, _mm256_fmadd_ps(v, scale, min));
      }
    }
  };
  return quantized_linear(x, N, G, K / 2, tile, tail, dequant_row);
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
                       const at::Tensor& mins) {
  TORCH_CHECK(qs.dim() == 2 && qs.scalar_type() == at::kByte && qs.is_contiguous(),
              "int4_linear: qs must be a contiguous uint8 [N, K/2] tensor");
  const int64_t N = qs.size(0), K = qs.size(1) * 2;
  check_common(x, scales, N, K, "int4_linear");
  TORCH_CHECK(mins.sizes() == scales.sizes() && mins.scalar_type() == scales.scalar_type(),
              "int4_linear: mins must match scales in shape and dtype");
  const at::Tensor s = scales.contiguous(), m = mins.contiguous();
  if (s.scalar_type() == at::kHalf) return int4_linear_typed<at::Half>(x, qs, s, m);
  return int4_linear_typed<float>(x, qs, s, m);
}

template <typename S>
at::Tensor int8_linear_typed(const at::Tensor& x, const at::Tensor& qw, const at::Tensor& scales) {
  const int64_t N = qw.size(0), K = qw.size(1), G = scales.size(1);
  const int8_t* q = qw.data_ptr<int8_t>();
  const S* s = scales.data_ptr<S>();
  auto tile = [&](int64_t n, const int8_t* xq, const float* xd, const float* xg, float* out) {
    int8_dot<NR, S>(q + n * K, s + n * G, K, G, xq, xd, xg, out);
  };
  auto tail = [&](int64_t n, const int8_t* xq, const float* xd, const float* xg, float* out) {
    int8_dot<1, S>(q + n * K, s + n * G, K, G, xq, xd, xg, out);
  };
  auto dequant_row = [&](int64_t n, float* w) {
    for (int64_t k = 0; k < K; k += 8) {
      const __m128i c8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + n * K + k));
      const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c8));
      _mm256_storeu_ps(w + k, _mm256_mul_ps(v, _mm256_set1_ps(to_float(s[n * G + k * G / K]))));
    }
  };
  return quantized_linear(x, N, G, K, tile, tail, dequant_row);
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar && q.is_contiguous(),
              "int8_linear: q must be a contiguous int8 [N, K] tensor");
  const int64_t N = q.size(0), K = q.size(1);
  check_common(x, scales, N, K, "int8_linear");
  const at::Tensor s = scales.contiguous();
  if (s.scalar_type() == at::kHalf) return int8_linear_typed<at::Half>(x, q, s);
  return int8_linear_typed<float>(x, q, s);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmforge, m) {
  m.def("int4_linear(Tensor x, Tensor qs, Tensor scales, Tensor mins) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor q, Tensor scales) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmforge, CPU, m) {
  m.impl("int4_linear", &int4_linear);
  m.impl("int8_linear", &int8_linear);
}
