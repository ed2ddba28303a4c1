// Attention for decode steps on the CPU, in one call per layer: rotary embedding of q and k, the write of
// k and v into the static KV cache, and softmax(q k^T * scale + mask) v over the cached keys.
// For a handful of new tokens this replaces ~20 small ATen ops (split, rope, cache index_copy,
// transposes, the SDPA call and its mask conversion), whose fixed costs dominate a small model's step.
//
//   qkv      fp32 [B, S, H + 2 KV, hd]   the fused projection's output (q heads, then k, then v)
//   cos, sin fp32 [B, S, 1, rd] or empty  rope tables (sin signed, see models/layers.rope_cos_sin);
//                                         the first rd channels rotate, pairs (i, i + rd/2) or (2i, 2i+1)
//   k_cache, v_cache fp32 or fp16 [B, KV, Lmax, hd]  written at slots [S] (int64)
//   mask     bool [B, 1, S, L]            which of the first L cache slots each new token attends to
// returns  fp32 [B, S, H * hd]           (the input of the output projection)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using lmforge_attn::attend;
using lmforge_attn::rotate;
using lmforge_attn::store_row;

template <typename T>
void attend_cached(const float* x, const at::Tensor& cs, const at::Tensor& sn, T* kc, T* vc, const int64_t* slot,
                   const at::Tensor& mask, int64_t B, int64_t S, int64_t H, int64_t KV, int64_t hd, int64_t Lmax,
                   int64_t rd, float sc, bool interleaved, float* o);

at::Tensor attention_decode(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, at::Tensor k_cache,
                            at::Tensor v_cache, const at::Tensor& slots, const at::Tensor& mask, int64_t H,
                            int64_t KV, double scale, bool interleaved) {
  TORCH_CHECK(qkv.dim() == 4 && qkv.scalar_type() == at::kFloat && qkv.is_contiguous(),
              "attention_decode: qkv must be a contiguous float32 [B, S, H + 2 KV, hd] tensor");
  const int64_t B = qkv.size(0), S = qkv.size(1), hd = qkv.size(3);
  TORCH_CHECK(H > 0 && KV > 0 && H % KV == 0 && qkv.size(2) == H + 2 * KV,
              "attention_decode: qkv has ", qkv.size(2), " heads, expected H + 2 KV = ", H + 2 * KV);
  for (const at::Tensor* c : {&k_cache, &v_cache}) {
    TORCH_CHECK(c->dim() == 4 && (c->scalar_type() == at::kFloat || c->scalar_type() == at::kHalf) &&
                    c->scalar_type() == k_cache.scalar_type() && c->is_contiguous() && c->size(0) == B &&
                    c->size(1) == KV && c->size(3) == hd,
                "attention_decode: the caches must be contiguous float32 or float16 [B, KV, Lmax, hd], both alike");
  }
  const int64_t Lmax = k_cache.size(2);
  TORCH_CHECK(slots.dim() == 1 && slots.size(0) == S && slots.scalar_type() == at::kLong,
              "attention_decode: slots must be int64 [S]");
  TORCH_CHECK(mask.dim() == 4 && mask.scalar_type() == at::kBool && mask.size(0) == B && mask.size(1) == 1 &&
                  mask.size(2) == S && mask.size(3) <= Lmax,
              "attention_decode: mask must be bool [B, 1, S, L] with L <= the cache length");
  const int64_t rd = cos.numel() ? cos.size(-1) : 0;
  if (rd) {
    TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 4 && cos.size(0) == B && cos.size(1) == S &&
                    cos.size(2) == 1 && rd <= hd && rd % 2 == 0 && cos.scalar_type() == at::kFloat &&
                    sin.scalar_type() == at::kFloat,
                "attention_decode: cos and sin must be float32 [B, S, 1, rd] with an even rd <= hd");
  }
  const at::Tensor cs = rd ? cos.contiguous() : cos, sn = rd ? sin.contiguous() : sin;
  const at::Tensor slot_t = slots.contiguous();
  const int64_t* slot = slot_t.data_ptr<int64_t>();
  for (int64_t s = 0; s < S; ++s) {
    TORCH_CHECK(slot[s] >= 0 && slot[s] < Lmax, "attention_decode: slot ", slot[s], " is outside the cache");
  }
  at::Tensor out = at::empty({B, S, H * hd}, qkv.options());
  const float* x = qkv.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  if (k_cache.scalar_type() == at::kHalf) {
    attend_cached(x, cs, sn, k_cache.data_ptr<at::Half>(), v_cache.data_ptr<at::Half>(), slot, mask, B, S, H, KV, hd, Lmax,
                  rd, sc, interleaved, out.data_ptr<float>());
  } else {
    attend_cached(x, cs, sn, k_cache.data_ptr<float>(), v_cache.data_ptr<float>(), slot, mask, B, S, H, KV, hd, Lmax, rd,
                  sc, interleaved, out.data_ptr<float>());
  }
  return out;
}

template <typename T>
void attend_cached(const float* x, const at::Tensor& cs, const at::Tensor& sn, T* kc, T* vc, const int64_t* slot,
                   const at::Tensor& mask, int64_t B, int64_t S, int64_t H, int64_t KV, int64_t hd, int64_t Lmax,
                   int64_t rd, float sc, bool interleaved, float* o) {
  const bool* mk = mask.data_ptr<bool>();
  const int64_t ms0 = mask.stride(0), ms2 = mask.stride(2), ms3 = mask.stride(3), L = mask.size(3);
  const int64_t heads = H + 2 * KV;
  auto rope_at = [&](int64_t b, int64_t s, const float** c, const float** n) {
    *c = rd ? cs.data_ptr<float>() + (b * S + s) * rd : nullptr;
    *n = rd ? sn.data_ptr<float>() + (b * S + s) * rd : nullptr;
  };

  // 1. the new keys (rotated) and values into the cache
  std::vector<float> rotated(hd);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t s = 0; s < S; ++s) {
      const float *c, *n;
      rope_at(b, s, &c, &n);
      for (int64_t j = 0; j < KV; ++j) {
        const float* k = x + ((b * S + s) * heads + H + j) * hd;
        rotate(k, rotated.data(), c, n, rd, hd, interleaved);
        store_row(rotated.data(), kc + ((b * KV + j) * Lmax + slot[s]) * hd, hd);
        store_row(k + KV * hd, vc + ((b * KV + j) * Lmax + slot[s]) * hd, hd);
      }
    }
  }

  // 2. every query head against the cache
  const int64_t group = H / KV;
  at::parallel_for(0, B * H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> q(hd), p(lmforge_attn::attend_scratch(L, hd));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / H, h = t % H, j = h / group;
      const T* kb = kc + (b * KV + j) * Lmax * hd;
      const T* vb = vc + (b * KV + j) * Lmax * hd;
      for (int64_t s = 0; s < S; ++s) {
        const float* qs = x + ((b * S + s) * heads + h) * hd;
        const float *c, *n;
        rope_at(b, s, &c, &n);
        rotate(qs, q.data(), c, n, rd, hd, interleaved);
        attend(q.data(), kb, vb, mk + b * ms0 + s * ms2, ms3, L, hd, sc, o + (b * S + s) * H * hd + h * hd, p.data());
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmforge, m) {
  m.def("attention_decode(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache, "
        "Tensor slots, Tensor mask, int n_heads, int n_kv_heads, float scale, bool interleaved) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmforge, CPU, m) { m.impl("attention_decode", &attention_decode); }
