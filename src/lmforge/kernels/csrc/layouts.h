// The layouts of an op's quantized tensors: which scale type (and, for int8, code type) they have. Used
// by the ops, not by the kernels, so that the A/B harnesses compile the kernels without ATen's tensors.
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

// Whether int8 scales are K-quant half-block ones (one per 16 of K columns, G = 2 K/32).
inline bool half_block_scales(const at::Tensor& s, int64_t K) {
  return s.scalar_type() == at::kByte && scale_groups(s) == 2 * (K / QK);
}

// f(layout) with the int8 layout L<S, C> of codes p (C = int8_t plain, uint8_t grouped) and scales [N, G]
// (S = at::Half, float; K-quant uint8 scales: KScale with K-quant mins m, KHalfScale for half-block ones;
// m is empty or undefined for every layout but KScale).
template <template <typename, typename> class L, typename C, typename F>
auto with_int8_codes(const C* p, const at::Tensor& s, const at::Tensor& m, int64_t K, F&& f) {
  const int64_t G = scale_groups(s);
  switch (s.scalar_type()) {
    case at::kHalf: return f(L<at::Half, C>{{p, s.data_ptr<at::Half>(), K, G}});
    case at::kByte: {
      const KScales scales{s.data_ptr<uint8_t>()};
      if (m.defined() && m.numel()) return f(L<KScale, C>{{p, scales, K, G, KScales{m.data_ptr<uint8_t>()}}});
      return f(L<KHalfScale, C>{{p, scales, K, G}});
    }
    default: return f(L<float, C>{{p, s.data_ptr<float>(), K, G}});
  }
}

// with_int8_codes for codes q [N, K]: int8 (plain) or uint8 (grouped).
template <template <typename, typename> class L, typename F>
auto with_int8(const at::Tensor& q, const at::Tensor& s, const at::Tensor& m, int64_t K, F&& f) {
  if (q.scalar_type() == at::kByte) return with_int8_codes<L>(q.data_ptr<uint8_t>(), s, m, K, f);
  return with_int8_codes<L>(q.data_ptr<int8_t>(), s, m, K, f);
}

}  // namespace lmforge_simd
