// Quantized-weight linear layers for x86 CPUs with AVX2 + FMA + F16C: y [M, N] = x [M, K] @ W.T, W in
// blocks of 32 input columns, x in fp32. The weights are dequantized in registers, 8 at a time, and
// multiplied with the activation in fp32: the result is the product with the dequantized weight (up to
// the fp32 summation order), so a quantized model computes exactly what its float reading computes.
// See lmforge/kernels/__init__.py for the layouts and reference.py for the definitions.
//
//   int4: qs uint8 [N, K/2], rows of interleaved groups of 8 blocks and then plain blocks (see the layout
//         in lmforge/kernels/__init__.py); scales, mins fp16 or fp32 [N, G]: w = q * scale + min, groups
//         of K/G columns (a multiple of 32).
//   int8: q int8 [N, K] (plain) or uint8 [N, K] (grouped: codes + 128, interleaved like int4's groups);
//         scales fp16 or fp32 [N, G]: w = q * scale; either layout also takes K-quant scales, half-block
//         ones (groups of 16 columns, GGUF Q6_K) or ones of blocks of 32 with K-quant mins (w = q *
//         scale + min, GGUF Q5_K).
//
// Few activation rows (decode): every weight row is read once and multiplied with up to MAX_ROWS rows of
// x. Many rows (prefill): the weight is dequantized in panels of rows and multiplied by the prompt kernel
// of dense.h (on AMD CPUs, up to its PROMPT_MAX_ROWS) or ATen's GEMM.
// The ops' act_bits argument (16 or 8) sends decode-sized inputs to quant_act_linear.cpp instead.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "dense.h"
#include "layouts.h"
#include "simd.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using namespace lmforge_simd;

constexpr int64_t MAX_ROWS = 4;         // activation rows per pass over the weights
constexpr int64_t GEMM_MIN_ROWS = 32;   // from this many rows on, dequantize and use ATen's GEMM
constexpr int64_t PREFETCH_BLOCKS = 8;  // how far ahead in a weight row to prefetch

// ----------------------------------------------------------------------------------- GEMV tiles

// y[m * N + n0 + r] = dot(weight row n0 + r, x row m) for R weight rows and MR activation rows;
// xg [MR, G]: the activation's group sums (for the mins).
template <int R, int MR, typename Rows>
void dot_tile(const Rows& w, int64_t n0, const float* x, const float* xg, int64_t K, float* y, int64_t N) {
  const int64_t cpg = K / 8 / w.G;  // chunks of 8 columns per group: 4 per block, or 2 (half blocks)
  __m256 acc[R][MR];
  float mins[R][MR] = {};
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MR; ++m) acc[r][m] = _mm256_setzero_ps();
  for (int64_t g = 0; g < w.G; ++g) {
    __m256 gacc[R][MR];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MR; ++m) gacc[r][m] = _mm256_setzero_ps();
    for (int64_t chunk = g * cpg; chunk < (g + 1) * cpg; ++chunk) {
      const int64_t b = chunk / 4;
      const int c = chunk % 4;
      if (c == 0)
        for (int r = 0; r < R; ++r)  // the hardware prefetcher alone falls behind on R interleaved rows
          _mm_prefetch(reinterpret_cast<const char*>(w.row(n0 + r) + (b + PREFETCH_BLOCKS) * Rows::BLOCK_BYTES), _MM_HINT_T0);
      __m256 xv[MR];
      for (int m = 0; m < MR; ++m) xv[m] = _mm256_loadu_ps(x + m * K + b * QK + 8 * c);
      for (int r = 0; r < R; ++r) {
        const __m256 cv = w.codes(n0 + r, b, c);
        for (int m = 0; m < MR; ++m) gacc[r][m] = _mm256_fmadd_ps(cv, xv[m], gacc[r][m]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256 scale = _mm256_set1_ps(w.scale(n0 + r, g));
      for (int m = 0; m < MR; ++m) acc[r][m] = _mm256_fmadd_ps(gacc[r][m], scale, acc[r][m]);
      if constexpr (Rows::HAS_MIN) {
        const float mn = w.min(n0 + r, g);
        for (int m = 0; m < MR; ++m) mins[r][m] += mn * xg[m * w.G + g];
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MR; ++m) y[m * N + n0 + r] = hsum(acc[r][m]) + mins[r][m];
}

// y [MR, N] for MR <= MAX_ROWS rows of x: tiles of weight rows spread over the threads.
template <int MR, typename Rows>
void gemv(const Rows& w, const float* x, const float* xg, float* y, int64_t N, int64_t K, int64_t bytes_per_row) {
  constexpr int R = MR == 1 ? 4 : (MR == 2 ? 2 : 1);  // accumulators must fit in 16 registers
  parallel_tiles<R>(N, bytes_per_row, [&](int64_t n0, auto rows) { dot_tile<decltype(rows)::value, MR>(w, n0, x, xg, K, y, N); });
}

template <typename Rows>
void gemv_rows(const Rows& w, const float* x, float* y, int64_t M, int64_t N, int64_t K, int64_t bytes_per_row) {
  std::vector<float> xg(Rows::HAS_MIN ? M * w.G : 0);  // group sums of x, for the mins
  for (int64_t i = 0; i < static_cast<int64_t>(xg.size()); ++i) {
    const float* xi = x + i * (K / w.G);
    __m256 s = _mm256_setzero_ps();
    for (int64_t k = 0; k < K / w.G; k += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(xi + k));
    xg[i] = hsum(s);
  }
  for (int64_t m0 = 0; m0 < M; m0 += MAX_ROWS) {  // each pass: up to MAX_ROWS rows against all weights
    const float* xm = x + m0 * K;
    const float* xgm = xg.data() + (Rows::HAS_MIN ? m0 * w.G : 0);
    float* ym = y + m0 * N;
    switch (std::min(MAX_ROWS, M - m0)) {
      case 1: gemv<1>(w, xm, xgm, ym, N, K, bytes_per_row); break;
      case 2: gemv<2>(w, xm, xgm, ym, N, K, bytes_per_row); break;
      case 3: gemv<3>(w, xm, xgm, ym, N, K, bytes_per_row); break;
      default: gemv<4>(w, xm, xgm, ym, N, K, bytes_per_row); break;
    }
  }
}

// ---------------------------------------------------------------------------- dequantized GEMM

// y [M, N] = x @ W.T with W dequantized PANEL rows at a time into fp32 and multiplied by the prompt kernel
// (lmforge_dense::gemm where the build has it) or ATen's GEMM.
template <typename Rows>
at::Tensor gemm_dequantized(const Rows& w, const at::Tensor& x, int64_t N) {
  constexpr int64_t PANEL = 256;
  const int64_t K = x.size(1);
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  at::Tensor panel = at::empty({std::min(N, PANEL), K}, x.options());
  float* pp = panel.data_ptr<float>();
  for (int64_t n0 = 0; n0 < N; n0 += PANEL) {
    const int64_t rows = std::min(PANEL, N - n0);
    at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
      const int64_t cpg = K / 8 / w.G;  // chunks of 8 columns per group
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t b = 0; b < K / QK; ++b) {
          for (int c = 0; c < 4; ++c) {
            const int64_t g = (4 * b + c) / cpg;
            const __m256 scale = _mm256_set1_ps(w.scale(n0 + r, g)), min = _mm256_set1_ps(w.min(n0 + r, g));
            const __m256 v = _mm256_fmadd_ps(w.codes(n0 + r, b, c), scale, min);
            _mm256_storeu_ps(pp + r * K + b * QK + 8 * c, v);
          }
        }
      }
    });
#if LMFORGE_PROMPT_BITS
    if (lmforge_dense::prompt_kernel_takes(x.size(0), /*panels=*/true)) {
      lmforge_dense::gemm(pp, x.data_ptr<float>(), y.data_ptr<float>() + n0, x.size(0), rows, K, N);
      continue;
    }
#endif
    y.narrow(1, n0, rows).copy_(at::mm(x, panel.narrow(0, 0, rows).t()));
  }
  return y;
}

// ---------------------------------------------------------------------------------- table rows

// Rows ids [...] of a quantized table in fp32 [..., K] (an embedding lookup, see decode_row).
template <typename Rows>
at::Tensor table_rows(const Rows& w, const at::Tensor& ids, int64_t N, const char* op) {
  TORCH_CHECK(!ids.is_floating_point() && !ids.is_complex() && ids.scalar_type() != at::kBool, op,
              ": ids must be an integer tensor");
  const at::Tensor idx = ids.to(at::kLong).contiguous();
  const int64_t K = w.K, n = idx.numel();
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(ip[i] >= 0 && ip[i] < N, op, ": id ", ip[i], " is out of range for a table of ", N, " rows");
  auto shape = ids.sizes().vec();
  shape.push_back(K);
  at::Tensor out = at::empty(shape, ids.options().dtype(at::kFloat));
  float* op_ = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) decode_row(w, ip[i], op_ + i * K);
  return out;
}

// ---------------------------------------------------------------------------------------- ops

// Scales [N, G] fp16 / fp32, or K-quant uint8 ones [N, G / 8 * 10]; the group size K/G a multiple of
// 32, or with `halves` (int8) 16 for K-quant scales.
void check_scales(const at::Tensor& scales, int64_t N, int64_t K, const char* op, bool halves = false) {
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == N, op, ": scales must be [N, G]");
  const auto st = scales.scalar_type();
  TORCH_CHECK(st == at::kHalf || st == at::kFloat || st == at::kByte, op,
              ": scales must be float16, float32 or K-quant uint8");
  TORCH_CHECK(st != at::kByte || scales.size(1) % KSCALE_BYTES == 0, op,
              ": K-quant scales must be uint8 [N, G / 8 * 10] (10 bytes per 8 groups)");
  const int64_t G = scale_groups(scales);
  if (halves && K % QK == 0 && half_block_scales(scales, K)) return;
  TORCH_CHECK(G > 0 && K % G == 0 && (K / G) % QK == 0, op, ": the group size K/G must be a multiple of 32",
              halves ? " (or 16 with K-quant scales of int8 codes)" : "");
}

void check_x(const at::Tensor& x, int64_t K, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be on the CPU");
  TORCH_CHECK(x.is_floating_point(), op, ": x must be a floating-point tensor");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, op, ": x has ", x.size(-1), " features, the weight ", K);
}

template <typename Rows>
at::Tensor run(const at::Tensor& x, const Rows& w, int64_t N, int64_t bytes_per_row) {
  const int64_t K = x.size(-1);
  const at::Tensor x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = x2.size(0);
  at::Tensor y;
  if (M >= GEMM_MIN_ROWS) {
    y = gemm_dequantized(w, x2, N);
  } else {
    y = at::empty({M, N}, x2.options());
    gemv_rows(w, x2.data_ptr<float>(), y.data_ptr<float>(), M, N, K, bytes_per_row);
  }
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape).to(x.scalar_type());
}

void check_int4(const at::Tensor& qs, const at::Tensor& scales, const at::Tensor& mins, const char* op) {
  TORCH_CHECK(qs.dim() == 2 && qs.scalar_type() == at::kByte && qs.is_contiguous(), op,
              ": qs must be a contiguous uint8 [N, K/2] tensor");
  check_scales(scales, qs.size(0), qs.size(1) * 2, op);
  TORCH_CHECK((mins.sizes() == scales.sizes() || (mins.dim() == 2 && mins.size(0) == scales.size(0) && mins.size(1) == 0)) &&
                  mins.scalar_type() == scales.scalar_type(),
              op, ": mins must match scales in shape and dtype, or be empty [N, 0] (min = -8 scale)");
}

// int8 codes; mins (undefined or empty for none) only with K-quant scales of blocks of 32 (GGUF Q5_K),
// which need them.
void check_int8(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& mins, const char* op) {
  TORCH_CHECK(q.dim() == 2 && (q.scalar_type() == at::kChar || q.scalar_type() == at::kByte) && q.is_contiguous(), op,
              ": q must be a contiguous int8 (plain) or uint8 (grouped) [N, K] tensor");
  check_scales(scales, q.size(0), q.size(1), op, true);
  const bool kquant = scales.scalar_type() == at::kByte, halves = half_block_scales(scales, q.size(1));
  const bool has_mins = mins.defined() && mins.numel() > 0;
  TORCH_CHECK(!has_mins || (kquant && !halves && mins.sizes() == scales.sizes() && mins.scalar_type() == at::kByte), op,
              ": int8 mins go with K-quant scales of blocks of 32 and match them (uint8 [N, G / 8 * 10])");
  TORCH_CHECK(has_mins || !kquant || halves, op, ": K-quant int8 scales of blocks of 32 need their mins");
}

at::Tensor contiguous_or_none(const c10::optional<at::Tensor>& t) { return t.has_value() ? t->contiguous() : at::Tensor(); }

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
                       const at::Tensor& mins) {
  const int64_t N = qs.size(0), K = qs.size(1) * 2;
  const at::Tensor s = scales.contiguous(), m = mins.contiguous();
  return with_int4<Int4Codes>(qs.data_ptr<uint8_t>(), s, m, K, [&](const auto& w) { return run(x, w, N, K / 2); });
}

at::Tensor int4_rows(const at::Tensor& ids, const at::Tensor& qs, const at::Tensor& scales, const at::Tensor& mins) {
  check_int4(qs, scales, mins, "int4_rows");
  const int64_t N = qs.size(0), K = qs.size(1) * 2;
  const at::Tensor s = scales.contiguous(), m = mins.contiguous();
  return with_int4<Int4Codes>(qs.data_ptr<uint8_t>(), s, m, K, [&](const auto& w) { return table_rows(w, ids, N, "int4_rows"); });
}

at::Tensor int8_rows(const at::Tensor& ids, const at::Tensor& q, const at::Tensor& scales,
                     const c10::optional<at::Tensor>& mins) {
  const at::Tensor m = contiguous_or_none(mins);
  check_int8(q, scales, m, "int8_rows");
  const int64_t N = q.size(0), K = q.size(1);
  return with_int8<Int8Codes>(q, scales.contiguous(), m, K, [&](const auto& w) { return table_rows(w, ids, N, "int8_rows"); });
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, const at::Tensor& mins) {
  const int64_t N = q.size(0), K = q.size(1);
  return with_int8<Int8Codes>(q, scales.contiguous(), mins, K, [&](const auto& w) { return run(x, w, N, K); });
}

}  // namespace

namespace lmforge {  // quant_act_linear.cpp: the same products with integer-rounded activations
at::Tensor int4_linear_qact(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
                            const at::Tensor& mins, int64_t bits);
at::Tensor int8_linear_qact(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, const at::Tensor& mins,
                            int64_t bits);
bool amx_products();
}  // namespace lmforge

namespace {

// act_bits: 32 multiplies with the fp32 activation (the exact product of the dequantized weight); 8 or 16
// round it per block first, whatever the number of rows (the integer products took 0.3-0.6x the time
// of the dequantized GEMM per row from 32 to 2,046 rows on the CPUs measured, benchmarks/RESULTS.md).
bool rounded_activations(const at::Tensor& x, int64_t act_bits, const char* op) {
  TORCH_CHECK(act_bits == 32 || act_bits == 16 || act_bits == 8, op, ": act_bits must be 32, 16 or 8, got ", act_bits);
  return act_bits != 32;
}

at::Tensor int4_linear_op(const at::Tensor& x, const at::Tensor& qs, const at::Tensor& scales,
                          const at::Tensor& mins, int64_t act_bits) {
  check_int4(qs, scales, mins, "int4_linear");
  check_x(x, qs.size(1) * 2, "int4_linear");
  if (!rounded_activations(x, act_bits, "int4_linear")) return int4_linear(x, qs, scales, mins);
  return lmforge::int4_linear_qact(x, qs, scales.contiguous(), mins.contiguous(), act_bits);
}

at::Tensor int8_linear_op(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, int64_t act_bits,
                          const c10::optional<at::Tensor>& mins) {
  const at::Tensor m = contiguous_or_none(mins);
  check_int8(q, scales, m, "int8_linear");
  check_x(x, q.size(1), "int8_linear");
  if (!rounded_activations(x, act_bits, "int8_linear")) return int8_linear(x, q, scales, m);
  return lmforge::int8_linear_qact(x, q, scales.contiguous(), m, act_bits);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmforge, m) {
  m.def("int4_linear(Tensor x, Tensor qs, Tensor scales, Tensor mins, int act_bits=32) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor q, Tensor scales, int act_bits=32, Tensor? mins=None) -> Tensor");
  m.def("int4_rows(Tensor ids, Tensor qs, Tensor scales, Tensor mins) -> Tensor");
  m.def("int8_rows(Tensor ids, Tensor q, Tensor scales, Tensor? mins=None) -> Tensor");
  m.def("amx_products() -> bool", &lmforge::amx_products);
}

TORCH_LIBRARY_IMPL(lmforge, CPU, m) {
  m.impl("int4_linear", &int4_linear_op);
  m.impl("int8_linear", &int8_linear_op);
  m.impl("int4_rows", &int4_rows);
  m.impl("int8_rows", &int8_rows);
}
