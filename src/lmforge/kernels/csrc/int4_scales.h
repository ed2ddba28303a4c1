// The int4 layouts of an op's tensors: which scale type their scales and mins have (used by the ops,
// not by the kernels, so that the A/B harnesses compile the kernels without ATen's tensors).
#pragma once

#include <ATen/core/Tensor.h>

#include "simd.h"

namespace lmforge_simd {

// Scale groups per row of a scales tensor [N, G] (fp16 / fp32), or [N, G / 8 * 10] (K-quant, uint8).
inline int64_t scale_groups(const at::Tensor& s) {
  return s.scalar_type() == at::kByte ? s.size(1) / KSCALE_BYTES * GROUP : s.size(1);
}

// f(layout) with the int4 layout L<S> of codes qs [N, K/2] and scales / mins [N, G] for the scales'
// dtype (S = at::Half, float, or KScale for uint8); empty mins [N, 0] mean symmetric codes (null mins).
template <template <typename> class L, typename F>
auto with_int4(const uint8_t* qs, const at::Tensor& s, const at::Tensor& m, int64_t K, F&& f) {
  const int64_t G = scale_groups(s);
  const bool sym = m.numel() == 0;
  switch (s.scalar_type()) {
    case at::kHalf: return f(L<at::Half>{{qs, s.data_ptr<at::Half>(), sym ? nullptr : m.data_ptr<at::Half>(), K, G}});
    case at::kByte: return f(L<KScale>{{qs, KScales{s.data_ptr<uint8_t>()}, KScales{sym ? nullptr : m.data_ptr<uint8_t>()}, K, G}});
    default: return f(L<float>{{qs, s.data_ptr<float>(), sym ? nullptr : m.data_ptr<float>(), K, G}});
  }
}

}  // namespace lmforge_simd
