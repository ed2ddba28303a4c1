// Dense ops for the decode step. Dense linear layers on x86 CPUs with AVX2 + FMA + F16C: y [M, N] = x [M, K] @ W.T
// for a few activation rows (M <= MAX_ROWS), W [N, K] row-major in float32, bfloat16 or float16.
//
// A decode step is one activation row against every weight: the cost is reading W once from memory.
// ATen's GEMM is built for large M and streams a [N, K] weight at a fraction of the machine's read
// bandwidth when M is 1; this kernel reads each weight row once, sequentially, and multiplies it with
// all M activation rows (accumulating in fp32). bf16 / fp16 weights are widened to fp32 in registers,
// so half-precision models read half the bytes and need no emulated half-precision arithmetic.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

constexpr int64_t MAX_ROWS = 4;  // activation rows handled by the kernel; more go to ATen's GEMM
constexpr int64_t PREFETCH = 512;  // elements ahead in a weight row

using lmforge_simd::load8;

using lmforge_simd::hsum;

// y[m * ldy + r] = dot(w row r, x row m) for R weight rows and MR activation rows.
template <int R, int MR, typename W>
void dot_rows(const W* w, int64_t K, const float* x, float* y, int64_t ldy) {
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

template <int MR, typename W>
void gemv(const W* w, const float* x, float* y, int64_t N, int64_t K) {
  constexpr int R = MR == 1 ? 4 : 2;  // weight rows per step: the accumulators must fit in 16 registers
  const int64_t tiles = (N + R - 1) / R;
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / (R * K * static_cast<int64_t>(sizeof(W))));
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * R;
      if (n0 + R <= N) {
        dot_rows<R, MR>(w + n0 * K, K, x, y + n0, N);
      } else {
        for (int64_t n = n0; n < N; ++n) dot_rows<1, MR>(w + n * K, K, x, y + n, N);
      }
    }
  });
}

template <typename W>
void gemv_any(const W* w, const float* x, float* y, int64_t M, int64_t N, int64_t K) {
  switch (M) {
    case 1: return gemv<1>(w, x, y, N, K);
    case 2: return gemv<2>(w, x, y, N, K);
    case 3: return gemv<3>(w, x, y, N, K);
    default: return gemv<4>(w, x, y, N, K);
  }
}

at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "dense_linear: tensors must be on the CPU");
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "dense_linear: weight must be a contiguous [N, K] tensor");
  const auto wt = weight.scalar_type();
  TORCH_CHECK(wt == at::kFloat || wt == at::kBFloat16 || wt == at::kHalf,
              "dense_linear: weight must be float32, bfloat16 or float16");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "dense_linear: x has ", x.size(-1), " features, the weight ", K);
  const at::Tensor x2 = x.reshape({-1, K}).to(at::kFloat).contiguous();
  const int64_t M = x2.size(0);
  at::Tensor y = at::empty({M, N}, x2.options());
  if (M > MAX_ROWS) {
    y = at::mm(x2, weight.to(at::kFloat).t());
  } else {
    const float* xp = x2.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    if (wt == at::kFloat) gemv_any(weight.data_ptr<float>(), xp, yp, M, N, K);
    else if (wt == at::kBFloat16) gemv_any(weight.data_ptr<at::BFloat16>(), xp, yp, M, N, K);
    else gemv_any(weight.data_ptr<at::Half>(), xp, yp, M, N, K);
  }
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape).to(x.scalar_type());
}

// y = weight * (x / sqrt(mean(x^2) + eps)) over the last dimension, fp32 (Llama's RMSNorm). One call
// instead of ATen's six, whose dispatch costs more than the arithmetic on a decode step's few rows.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "rms_norm: x must be a float32 CPU tensor");
  const int64_t D = x.size(-1);
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.numel() == D, "rms_norm: weight must be float32 [D]");
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor y = at::empty_like(xc);
  const float *xp = xc.data_ptr<float>(), *wp = wc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t rows = xc.numel() / D, D8 = D / 8 * 8;
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * D;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t k = 0; k < D8; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k), _mm256_loadu_ps(xr + k), acc);
      float ss = hsum(acc);
      for (int64_t k = D8; k < D; ++k) ss += xr[k] * xr[k];
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(D) + static_cast<float>(eps));
      for (int64_t k = 0; k < D; ++k) yp[r * D + k] = wp[k] * (xr[k] * inv);
    }
  });
  return y;
}

// silu(gate) * up for h = [gate | up] along the last dimension (a gated MLP's fused input projection):
// [..., 2 n] -> [..., n], fp32, in one pass instead of ATen's split, silu and mul.
at::Tensor silu_mul(const at::Tensor& h) {
  TORCH_CHECK(h.device().is_cpu() && h.scalar_type() == at::kFloat && h.dim() >= 1 && h.size(-1) % 2 == 0,
              "silu_mul: h must be a float32 CPU tensor with an even last dimension");
  const at::Tensor hc = h.contiguous();
  const int64_t n = h.size(-1) / 2, rows = hc.numel() / (2 * n);
  auto shape = h.sizes().vec();
  shape.back() = n;
  at::Tensor y = at::empty(shape, h.options());
  const float* hp = hc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t n8 = n / 8 * 8;
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *g = hp + r * 2 * n, *u = g + n;
      float* o = yp + r * n;
      for (int64_t k = 0; k < n8; k += 8) {
        const __m256 gv = _mm256_loadu_ps(g + k);
        const __m256 sig = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(_mm256_set1_ps(1.f), lmforge_simd::exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
        _mm256_storeu_ps(o + k, _mm256_mul_ps(_mm256_mul_ps(gv, sig), _mm256_loadu_ps(u + k)));
      }
      for (int64_t k = n8; k < n; ++k) o[k] = g[k] / (1.f + std::exp(-g[k])) * u[k];
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmforge, m) {
  m.def("dense_linear(Tensor x, Tensor weight) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("silu_mul(Tensor h) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmforge, CPU, m) {
  m.impl("dense_linear", &dense_linear);
  m.impl("rms_norm", &rms_norm);
  m.impl("silu_mul", &silu_mul);
}
