// Dense ops for the decode step. Dense linear layers on x86 CPUs with AVX2 + FMA + F16C: y [M, N] = x [M, K] @ W.T
// for a few activation rows (M <= MAX_ROWS), W [N, K] row-major in float32, bfloat16 or float16; on AMD CPUs
// also for a prompt's rows (lmforge_dense::gemm, up to its PROMPT_MAX_ROWS), elsewhere those go to ATen's GEMM.
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

#include "dense.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

constexpr int64_t MAX_ROWS = 4;  // activation rows of the decode kernel (gemv)
using lmforge_dense::PROMPT_KERNEL;  // more rows: the prompt kernel (lmforge_dense::gemm) or ATen's GEMM
using lmforge_dense::dot_row;

template <int MR, typename W>
void gemv(const W* w, const float* x, float* y, int64_t N, int64_t K) {
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / (K * static_cast<int64_t>(sizeof(W))));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) dot_row<MR>(w + n * K, K, x, y + n, N);
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
  const float* xp = x2.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (M == 0) {
    // nothing to multiply
  } else if (M > MAX_ROWS) {
#if LMFORGE_PROMPT_BITS
    if (lmforge_dense::prompt_kernel_takes(M)) {
      using lmforge_dense::gemm;
      if (wt == at::kFloat) gemm(weight.data_ptr<float>(), xp, yp, M, N, K, N);
      else if (wt == at::kBFloat16) gemm(weight.data_ptr<at::BFloat16>(), xp, yp, M, N, K, N);
      else gemm(weight.data_ptr<at::Half>(), xp, yp, M, N, K, N);
    } else
#endif
      y = at::mm(x2, weight.to(at::kFloat).t());
  } else {
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
  const int64_t rows = xc.numel() / D;
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) lmforge_dense::rms_norm_row(xp + r * D, wp, D, static_cast<float>(eps), yp + r * D);
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
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) lmforge_dense::silu_mul_row(hp + r * 2 * n, hp + r * 2 * n + n, n, yp + r * n);
  });
  return y;
}

}  // namespace

bool dense_prompt_kernel() { return PROMPT_KERNEL; }

TORCH_LIBRARY_FRAGMENT(lmforge, m) {
  m.def("dense_linear(Tensor x, Tensor weight) -> Tensor");
  m.def("dense_prompt_kernel() -> bool", &dense_prompt_kernel);
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("silu_mul(Tensor h) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmforge, CPU, m) {
  m.impl("dense_linear", &dense_linear);
  m.impl("rms_norm", &rms_norm);
  m.impl("silu_mul", &silu_mul);
}
