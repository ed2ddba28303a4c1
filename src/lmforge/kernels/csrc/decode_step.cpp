// A whole decode step in one native call: the layers, the final norm and the head of pre-norm decoders
// with RMSNorm or LayerNorm, rope (or none; learned positions are added to the input), sequential or
// parallel attention and MLP, and a gated or plain MLP (Llama, Mistral, Qwen2, GPT-2, GPT-NeoX, GPT-J,
// Phi, Falcon, OPT-125m, ...).
//
// A small model's decode step is ~200 tiny ops. Called one by one from Python, each pays its dispatch,
// its Python around it and an OpenMP fork/join; on a 135M model that fixed cost is a third of the step
// (benchmarks/overhead.py). Here the step is one parallel region: the threads split every matrix
// product by rows of the weight, and meet at a barrier between the dependent phases of a layer:
//
//   norm + rounding of x | qkv | rope + cache write | attention | rounding | o (+= x)
//   | norm + rounding | gate/up (plain: fc1 and its activation) | silu * up + rounding | down (+= x)
//
// (a parallel block normalizes x once or twice up front, and both sublayers add into x.) The steps
// between the products work per row of the batch, so the threads take the rows between them.
//
// The arithmetic is that of the single ops (the same tiles: qact.h, dense.h, attention.h), so the step
// gives what the op-by-op path gives with the same act_bits, up to the fp32 summation order.
//
// DecodePlan (a torch custom class, torch.classes.lmforge.DecodePlan) is built once per model from its
// tensors (see lmforge/models/native_step.py), and holds references to them, not copies.
//
//   step(x [B, D] fp32, cos/sin [B, 1, 1, rd] fp32 or empty, k_cache/v_cache [layers, B, KV, Lmax, hd] fp32 or fp16,
//        slot, mask bool [B, 1, 1, L]) -> logits [B, V] fp32
//   writes the new keys (rotated) and values at `slot` of every layer's cache.
//   step_tokens(tokens [B] int64, positions [B, T] int64, k_cache, v_cache, slot, key_valid bool [B, T],
//               window, argmax int64 [B] or None) -> logits [B, V] fp32
//   the same step with its input made here from token ids (set_embedding, set_rope), and optionally
//   the greedy tokens: what Engine.generate calls, so that no op runs between two steps.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <omp.h>

#include "attention.h"
#include "dense.h"
#include "layouts.h"
#include "qact.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace {

using namespace lmforge_qact;  // QK, QRow, RoundedRows, dot_tile, Int4Rows, Int8Rows, for_tiles

// INT4, INT8: any of their layouts (with_int4, with_int8); PARTS: integer linears side by side (rows)
enum class Kind { DENSE_F32, INT4, INT8, PARTS };
enum class Act { SILU, GELU, GELU_TANH, RELU };

Act parse_act(const std::string& name) {
  if (name == "silu") return Act::SILU;
  if (name == "gelu") return Act::GELU;
  if (name == "gelu_tanh") return Act::GELU_TANH;
  TORCH_CHECK(name == "relu", "DecodePlan: unknown activation ", name);
  return Act::RELU;
}

// the activations as torch computes them in fp32 (GELU: erf, or the tanh approximation)
inline float activate(Act act, float x) {
  switch (act) {
    case Act::SILU: return x / (1.f + std::exp(-x));
    case Act::GELU: return 0.5f * x * (1.f + std::erf(x * 0.70710678118654752f));
    case Act::GELU_TANH: {
      const float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.f + std::tanh(inner));
    }
    default: return x > 0.f ? x : 0.f;
  }
}

// A norm: RMSNorm (weight) or LayerNorm (weight, optional bias), over D values of fp32.
struct Norm {
  bool layer = false;
  at::Tensor weight, bias;
  bool defined() const { return weight.defined(); }
  void apply(const float* x, int64_t D, float eps, float* y) const {
    const float* w = weight.data_ptr<float>();
    if (!layer) return lmforge_dense::rms_norm_row(x, w, D, eps, y);
    double mean = 0.0, var = 0.0;
    for (int64_t k = 0; k < D; ++k) mean += x[k];
    mean /= static_cast<double>(D);
    for (int64_t k = 0; k < D; ++k) var += (x[k] - mean) * (x[k] - mean);
    const float m = static_cast<float>(mean);
    const float inv = 1.f / std::sqrt(static_cast<float>(var / static_cast<double>(D)) + eps);
    const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
    for (int64_t k = 0; k < D; ++k) y[k] = (x[k] - m) * inv * w[k] + (b ? b[k] : 0.f);
  }
};

struct Lin {
  Kind kind;
  at::Tensor w, scales, mins, bias;  // w: the dense weight, int4 qs or int8 q
  int64_t N, K, G;
  int64_t ldy = 0;  // the stride of its output rows: N, or a PARTS linear's N for its parts
  std::vector<Lin> parts;  // PARTS: rows [0, parts[0].N), then the next part's, ... (ldy = N, no bias)
  std::vector<int64_t> offsets;  // PARTS: the first row of each part
  bool integer() const { return kind >= Kind::INT4; }
  // the blocks held in interleaved groups (the layouts' grouped()): the rounded input's layout; PARTS:
  // that of its grouped parts where it has any
  int64_t grouped() const {
    if (kind == Kind::PARTS) {
      int64_t g = 0;
      for (const Lin& p : parts) g = std::max(g, p.grouped());
      return g;
    }
    const bool plain = kind == Kind::INT8 && w.scalar_type() == at::kChar;
    return plain ? 0 : grouped_blocks(K);
  }
  // PARTS with both grouped and plain parts: the input is rounded in both layouts
  bool mixed_layouts() const {
    if (kind != Kind::PARTS) return false;
    for (const Lin& p : parts)
      if (p.grouped() != grouped()) return true;
    return false;
  }
};

// This thread's place in the team.
struct Team {
  int id, n;
  // the share [begin, end) of `count` items
  int64_t begin(int64_t count) const { return count * id / n; }
  int64_t end(int64_t count) const { return count * (id + 1) / n; }
  // the thread whose share of `count` items holds `item`
  int owner(int64_t count, int64_t item) const {
    int o = 0;
    while (item >= count * (o + 1) / n) ++o;
    return o;
  }
};

inline void barrier() {
#pragma omp barrier
}

// This thread's rows of y [M, N] = x @ W.T (+ bias), then the activation `act` when given; with
// `residual`, residual [M, N] += y instead (y is then scratch). Integer weights read the rounded rows,
// dense ones x; the plain parts of a PARTS linear with mixed layouts read `plain` (the input rounded
// for plain int8), the others xr.
class Linear {
 public:
  Linear(const Lin& l, const Team& t) : l_(l), t_(t) {}

  // returns this thread's rows [r0, r1) of y (a PARTS linear: of its last part)
  std::pair<int64_t, int64_t> run(const float* x, const RoundedRows& xr, int64_t M, float* y, float* residual,
                                  bool two, const Act* act = nullptr, const RoundedRows* plain = nullptr) const {
    if (l_.kind == Kind::PARTS) {  // each part's rows in place, a share of each for every thread
      std::pair<int64_t, int64_t> rows;
      for (size_t i = 0; i < l_.parts.size(); ++i) {
        const Lin& p = l_.parts[i];
        const RoundedRows& in = p.grouped() == l_.grouped() ? xr : *plain;
        const int64_t off = l_.offsets[i];
        rows = Linear(p, t_).run(x, in, M, y + off, residual ? residual + off : nullptr, two, act);
      }
      return rows;
    }
    int64_t r0 = 0, r1 = 0;
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int64_t mr = std::min<int64_t>(4, M - m0);
      std::pair<int64_t, int64_t> rows;
      switch (mr) {
        case 1: rows = group<1>(x, xr, m0, y, two); break;
        case 2: rows = group<2>(x, xr, m0, y, two); break;
        case 3: rows = group<3>(x, xr, m0, y, two); break;
        default: rows = group<4>(x, xr, m0, y, two); break;
      }
      r0 = rows.first;
      r1 = rows.second;
    }
    const float* bias = l_.bias.defined() ? l_.bias.data_ptr<float>() : nullptr;
    if (!bias && !residual && !act) return {r0, r1};
    const int64_t N = l_.ldy;
    for (int64_t m = 0; m < M; ++m) {
      float* ym = y + m * N;
      if (bias)
        for (int64_t n = r0; n < r1; ++n) ym[n] += bias[n];
      if (act)
        for (int64_t n = r0; n < r1; ++n) ym[n] = activate(*act, ym[n]);
      if (residual)
        for (int64_t n = r0; n < r1; ++n) residual[m * N + n] += ym[n];
    }
    return {r0, r1};
  }

 private:
  // this thread's tiles: returns its rows [r0, r1)
  template <int R, typename Tile>
  std::pair<int64_t, int64_t> share(Tile tile) const {
    const int64_t tiles = (l_.N + R - 1) / R, t0 = t_.begin(tiles), t1 = t_.end(tiles);
    for_tiles<R>(l_.N, t0, t1, tile);
    return {std::min(l_.N, t0 * R), std::min(l_.N, t1 * R)};
  }

  template <int MR, typename W>
  std::pair<int64_t, int64_t> dense(const W* w, const float* x, float* y) const {
    const int64_t K = l_.K, ldy = l_.ldy;
    auto tile = [&](int64_t n, auto) { lmforge_dense::dot_row<MR>(w + n * K, K, x, y + n, ldy); };
    return share<1>(tile);
  }

  template <int MR, bool TWO, typename Rows>
  std::pair<int64_t, int64_t> quant(const Rows& w, const QRow* xr, float* y) const {
    const int64_t N = l_.N, ldy = l_.ldy;
    auto tile = [&](int64_t n0, auto rows) { dot_tile<decltype(rows)::value, MR, TWO>(w, n0, xr, y, N, ldy); };
    return share<tile_rows<Rows, MR, TWO>()>(tile);
  }

  template <int MR, bool TWO>
  std::pair<int64_t, int64_t> integer(const QRow* xr, float* y) const {
    auto run = [&](const auto& w) { return quant<MR, TWO>(w, xr, y); };
    if (l_.kind == Kind::INT4) return with_int4<Int4Rows>(l_.w.data_ptr<uint8_t>(), l_.scales, l_.mins, l_.K, run);
    return with_int8<Int8Rows>(l_.w, l_.scales, l_.mins, l_.K, run);
  }

  template <int MR>
  std::pair<int64_t, int64_t> group(const float* x, const RoundedRows& xr, int64_t m0, float* y, bool two) const {
    float* ym = y + m0 * l_.ldy;
    switch (l_.kind) {
      case Kind::DENSE_F32: return dense<MR>(l_.w.data_ptr<float>(), x + m0 * l_.K, ym);
      default:
        return two ? integer<MR, true>(xr.rows.data() + m0, ym) : integer<MR, false>(xr.rows.data() + m0, ym);
    }
  }

  const Lin& l_;
  const Team& t_;
};

// What a step reads besides x and the caches: rope cos / signed sin [B, rd] (rd = 0: none), the mask
// (row b's slot l at mask[b * ms0 + l * ms3], slots 0 .. L - 1), and where to put the greedy tokens.
struct Inputs {
  const float *cos, *sin;
  int64_t rd;
  const bool* mask;
  int64_t ms0, ms3, L;
  int64_t* argmax;
};

// The first maximum of v [n], or its first NaN (numpy's argmax): the greedy token of a row of logits.
struct Best {
  int64_t index = -1;  // -1: no values
  float value = -std::numeric_limits<float>::infinity();
  bool nan = false;
};

inline Best first_max(const float* v, int64_t n) {
  if (n <= 0) return {};
  __m256 mx = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), unordered = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(v + i);
    unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    mx = _mm256_max_ps(mx, x);
  }
  float m = lmforge_simd::hmax(mx);
  bool nan = _mm256_movemask_ps(unordered) != 0;
  for (; i < n; ++i) {
    if (std::isnan(v[i])) nan = true;
    else m = std::max(m, v[i]);
  }
  if (nan) {
    for (i = 0; i < n; ++i)
      if (std::isnan(v[i])) return {i, v[i], true};
  }
  const __m256 mv = _mm256_set1_ps(m);
  for (i = 0; i + 8 <= n; i += 8) {
    const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(v + i), mv, _CMP_EQ_OQ));
    if (hit) return {i + __builtin_ctz(hit), m, false};
  }
  for (; i < n; ++i)
    if (v[i] == m) break;
  return {i, m, false};
}

class DecodePlan : public torch::CustomClassHolder {
 public:
  // norm: "rms" or "layer"; parallel: x + attn(n(x)) + mlp(n'(x)) blocks; mlp: "gated" (act(gate) * up,
  // act silu) or "plain" (act(fc1)); act: silu, gelu, gelu_tanh or relu.
  DecodePlan(int64_t dim, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, double eps, bool interleaved,
             int64_t act_bits, const std::string& norm, bool parallel, const std::string& mlp, const std::string& act)
      : D_(dim), H_(n_heads), KV_(n_kv_heads), hd_(head_dim), eps_(static_cast<float>(eps)),
        interleaved_(interleaved), act_bits_(act_bits), layer_norm_(norm == "layer"), parallel_(parallel),
        gated_(mlp == "gated"), act_(parse_act(act)) {
    TORCH_CHECK(norm == "rms" || norm == "layer", "DecodePlan: norm must be rms or layer, got ", norm);
    TORCH_CHECK(mlp == "gated" || mlp == "plain", "DecodePlan: mlp must be gated or plain, got ", mlp);
    TORCH_CHECK(!gated_ || act_ == Act::SILU, "DecodePlan: gated MLPs are silu(gate) * up");
    TORCH_CHECK(dim > 0 && n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0 && head_dim > 0,
                "DecodePlan: bad shape");
    TORCH_CHECK(act_bits == 8 || act_bits == 16, "DecodePlan: act_bits must be 8 or 16, got ", act_bits);
  }

  // format: "dense" (fp32 weight [N, K]), "int4" (qs, scales, mins) or "int8" (q: int8 plain or uint8
  // grouped, scales, and K-quant mins with K-quant scales of blocks of 32), in the layouts of
  // lmforge/kernels/__init__.py; returns the linear's index.
  int64_t add_linear(const std::string& format, const std::vector<at::Tensor>& parts, const c10::optional<at::Tensor>& bias) {
    Lin l;
    auto cpu_contiguous = [](const at::Tensor& t) { return t.device().is_cpu() && t.is_contiguous(); };
    for (const auto& p : parts) TORCH_CHECK(cpu_contiguous(p), "DecodePlan: weights must be contiguous CPU tensors");
    if (format == "dense") {
      TORCH_CHECK(parts.size() == 1 && parts[0].dim() == 2, "DecodePlan: a dense linear is one [N, K] weight");
      l.w = parts[0];
      TORCH_CHECK(l.w.scalar_type() == at::kFloat, "DecodePlan: dense weights must be fp32");
      l.kind = Kind::DENSE_F32;
      l.N = l.w.size(0);
      l.K = l.w.size(1);
      l.G = 1;
    } else if (format == "int4" || format == "int8") {
      const bool int4 = format == "int4";
      TORCH_CHECK(parts.size() == 3u || (!int4 && parts.size() == 2u), "DecodePlan: ", format, " takes ",
                  int4 ? "3 tensors" : "2 or 3 tensors");
      l.w = parts[0];
      l.scales = parts[1];
      if (parts.size() == 3u) l.mins = parts[2];
      TORCH_CHECK(l.w.dim() == 2 && (l.w.scalar_type() == at::kByte || (!int4 && l.w.scalar_type() == at::kChar)),
                  "DecodePlan: bad ", format, " codes");
      l.N = l.w.size(0);
      l.K = int4 ? l.w.size(1) * 2 : l.w.size(1);
      const auto st = l.scales.scalar_type();
      TORCH_CHECK(l.scales.dim() == 2 && l.scales.size(0) == l.N && (st == at::kHalf || st == at::kFloat ||
                                                                    (st == at::kByte && l.scales.size(1) % KSCALE_BYTES == 0)),
                  "DecodePlan: scales must be fp16 or fp32 [N, G], or K-quant uint8 [N, G / 8 * 10]");
      l.G = scale_groups(l.scales);
      const bool halves = !int4 && half_block_scales(l.scales, l.K);
      TORCH_CHECK(l.K % QK == 0 && (halves || (l.K % l.G == 0 && (l.K / l.G) % QK == 0)),
                  "DecodePlan: groups must be multiples of 32 columns (or 16, K-quant scales of int8 codes)");
      const bool has_mins = l.mins.defined() && l.mins.numel() > 0;
      if (int4) {
        TORCH_CHECK((l.mins.sizes() == l.scales.sizes() || (l.mins.dim() == 2 && l.mins.size(0) == l.N && l.mins.size(1) == 0)) &&
                        l.mins.scalar_type() == st,
                    "DecodePlan: mins must match scales, or be empty [N, 0] (min = -8 scale)");
        l.kind = Kind::INT4;
      } else {
        TORCH_CHECK(has_mins == (st == at::kByte && !halves) && (!has_mins || l.mins.sizes() == l.scales.sizes()),
                    "DecodePlan: int8 mins go with (and only with) K-quant scales of blocks of 32, and match them");
        l.kind = Kind::INT8;
      }
    } else {
      TORCH_CHECK(false, "DecodePlan: unknown linear format ", format);
    }
    if (bias.has_value() && bias->defined()) {
      TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == l.N && cpu_contiguous(*bias),
                  "DecodePlan: a bias must be fp32 [N]");
      l.bias = *bias;
    }
    l.ldy = l.N;
    lins_.push_back(l);
    return static_cast<int64_t>(lins_.size()) - 1;
  }

  // One linear of the integer linears `ids` (added without biases, same K) side by side: its rows are
  // theirs in order (a fused q/k/v whose parts have different layouts, GGUF Q4_K_M's Q4_K q and k with a
  // Q6_K v); bias [sum of N] as add_linear's. Returns its index.
  int64_t add_parts(const std::vector<int64_t>& ids, const c10::optional<at::Tensor>& bias) {
    TORCH_CHECK(!ids.empty(), "DecodePlan: add_parts needs linears");
    Lin l;
    l.kind = Kind::PARTS;
    l.N = 0;
    l.G = 1;
    for (int64_t i : ids) {
      TORCH_CHECK(i >= 0 && i < static_cast<int64_t>(lins_.size()), "DecodePlan: no linear ", i);
      const Lin& p = lins_[i];
      TORCH_CHECK(p.kind == Kind::INT4 || p.kind == Kind::INT8, "DecodePlan: parts must be int4 or int8 linears");
      TORCH_CHECK(!p.bias.defined(), "DecodePlan: parts have no bias (the whole linear has it)");
      TORCH_CHECK(l.parts.empty() || p.K == l.K, "DecodePlan: parts must have the same K");
      l.K = p.K;
      l.offsets.push_back(l.N);
      l.parts.push_back(p);
      l.N += p.N;
    }
    l.ldy = l.N;
    for (size_t i = 0; i < l.parts.size(); ++i) {
      Lin& p = l.parts[i];
      p.ldy = l.N;
      if (bias.has_value() && bias->defined()) {
        TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == l.N && bias->is_contiguous() && bias->device().is_cpu(),
                    "DecodePlan: a bias must be fp32 [N]");
        p.bias = bias->narrow(0, l.offsets[i], p.N);  // contiguous: a range of a vector
      }
    }
    lins_.push_back(l);
    return static_cast<int64_t>(lins_.size()) - 1;
  }

  // mlp_norm may be absent in a parallel block whose sublayers share attn_norm.
  void add_layer(const at::Tensor& attn_norm, const c10::optional<at::Tensor>& attn_norm_bias, int64_t qkv, int64_t o,
                 const c10::optional<at::Tensor>& mlp_norm, const c10::optional<at::Tensor>& mlp_norm_bias, int64_t w_in,
                 int64_t w_out, double scale) {
    const int64_t n = static_cast<int64_t>(lins_.size());
    for (int64_t i : {qkv, o, w_in, w_out}) TORCH_CHECK(i >= 0 && i < n, "DecodePlan: no linear ", i);
    const Norm n1 = make_norm(attn_norm, attn_norm_bias);
    const Norm n2 = mlp_norm.has_value() && mlp_norm->defined() ? make_norm(*mlp_norm, mlp_norm_bias) : Norm{};
    TORCH_CHECK(parallel_ || n2.defined(), "DecodePlan: a sequential block needs its MLP norm");
    const int64_t q = H_ * hd_, heads = H_ + 2 * KV_;
    TORCH_CHECK(lins_[qkv].K == D_ && lins_[qkv].N == heads * hd_, "DecodePlan: qkv must be [", heads * hd_, ", ", D_, "]");
    TORCH_CHECK(lins_[o].K == q && lins_[o].N == D_, "DecodePlan: o must be [", D_, ", ", q, "]");
    const int64_t hidden = gated_ ? lins_[w_in].N / 2 : lins_[w_in].N;
    TORCH_CHECK(lins_[w_in].K == D_ && (!gated_ || lins_[w_in].N % 2 == 0), "DecodePlan: the MLP input must be [(2) hidden, D]");
    TORCH_CHECK(lins_[w_out].K == hidden && lins_[w_out].N == D_, "DecodePlan: the MLP output must be [D, hidden]");
    layers_.push_back(Layer{n1, n2, Norm{}, Norm{}, qkv, o, w_in, w_out, static_cast<float>(scale)});
  }

  // Norms over each head of q and k, before rope (Qwen3, Phi's qk_layernorm), for the last added layer.
  void set_qk_norm(const at::Tensor& q_weight, const c10::optional<at::Tensor>& q_bias, const at::Tensor& k_weight,
                   const c10::optional<at::Tensor>& k_bias) {
    TORCH_CHECK(!layers_.empty(), "DecodePlan: set_qk_norm follows add_layer");
    layers_.back().q_norm = make_norm(q_weight, q_bias, hd_);
    layers_.back().k_norm = make_norm(k_weight, k_bias, hd_);
  }

  void set_head(const c10::optional<at::Tensor>& norm, const c10::optional<at::Tensor>& norm_bias, int64_t head) {
    TORCH_CHECK(head >= 0 && head < static_cast<int64_t>(lins_.size()) && lins_[head].K == D_ &&
                    lins_[head].kind != Kind::PARTS,
                "DecodePlan: bad head");
    if (norm.has_value() && norm->defined()) norm_ = make_norm(*norm, norm_bias);
    head_ = head;
  }

  // The embedding table (a linear added with add_linear: its rows are the tokens' vectors) and the
  // learned positions (fp32 [P, D], looked up at position + pos_offset) of step_tokens.
  void set_embedding(int64_t table, const c10::optional<at::Tensor>& positions, int64_t pos_offset) {
    TORCH_CHECK(table >= 0 && table < static_cast<int64_t>(lins_.size()) && lins_[table].K == D_ && !lins_[table].bias.defined() &&
                    lins_[table].kind != Kind::PARTS,
                "DecodePlan: bad embedding table");
    if (positions.has_value() && positions->defined()) {
      const at::Tensor& p = *positions;
      TORCH_CHECK(p.dim() == 2 && p.size(1) == D_ && p.scalar_type() == at::kFloat && p.is_contiguous() && p.device().is_cpu(),
                  "DecodePlan: learned positions must be contiguous fp32 [P, ", D_, "]");
      pos_ = p;
      pos_offset_ = pos_offset;
    }
    embed_ = table;
  }

  // The rope frequencies of step_tokens (fp32 [rd / 2]): a position p turns channel pair i by p * inv_freq[i].
  void set_rope(const at::Tensor& inv_freq) {
    TORCH_CHECK(inv_freq.dim() == 1 && inv_freq.scalar_type() == at::kFloat && inv_freq.is_contiguous() &&
                    inv_freq.device().is_cpu() && 2 * inv_freq.numel() <= hd_,
                "DecodePlan: inv_freq must be contiguous fp32 [rd / 2] with rd <= head_dim");
    inv_freq_ = inv_freq;
    rope_blocks_.clear();
  }

  bool takes_tokens() const { return embed_ >= 0; }

  at::Tensor step(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor k_cache,
                  at::Tensor v_cache, int64_t slot, const at::Tensor& mask) {
    TORCH_CHECK(x.dim() == 2 && x.size(1) == D_ && x.scalar_type() == at::kFloat && x.device().is_cpu(),
                "DecodePlan.step: x must be fp32 [B, ", D_, "]");
    const int64_t B = x.size(0);
    check_caches(k_cache, v_cache, B, slot);
    TORCH_CHECK(mask.dim() == 4 && mask.scalar_type() == at::kBool && mask.size(0) == B && mask.size(1) == 1 &&
                    mask.size(2) == 1 && mask.size(3) > slot && mask.size(3) <= k_cache.size(3),
                "DecodePlan.step: mask must be bool [B, 1, 1, L] with slot < L <= the cache length");
    const int64_t rd = cos.numel() ? cos.size(-1) : 0;
    if (rd) {
      TORCH_CHECK(cos.sizes() == sin.sizes() && cos.numel() == B * rd && rd <= hd_ && rd % 2 == 0 &&
                      cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat,
                  "DecodePlan.step: cos and sin must be fp32 [B, 1, 1, rd] with an even rd <= head_dim");
    }
    const at::Tensor cs = cos.contiguous(), sn = sin.contiguous();
    const Inputs in{rd ? cs.data_ptr<float>() : nullptr, rd ? sn.data_ptr<float>() : nullptr, rd,
                    mask.data_ptr<bool>(), mask.stride(0), mask.stride(3), mask.size(3), nullptr};
    return dispatch(x.contiguous(), k_cache, v_cache, slot, in);
  }

  // The step from token ids: tokens [B] int64, positions [B, T] int64 (the step's are column `slot`),
  // key_valid [B, T] bool (slot l < T is visible where true; the step sees slots 0 .. slot), window: a
  // sliding attention window (0: none). The embedding lookup (set_embedding), the rope angles
  // (set_rope) and the mask are made here, so that no op runs between two steps; with `argmax` [B]
  // int64 given, also each row's greedy token (the first maximum of its logits, or its first NaN).
  at::Tensor step_tokens(const at::Tensor& tokens, const at::Tensor& positions, at::Tensor k_cache, at::Tensor v_cache,
                         int64_t slot, const at::Tensor& key_valid, int64_t window, const c10::optional<at::Tensor>& argmax) {
    TORCH_CHECK(embed_ >= 0, "DecodePlan.step_tokens: set_embedding was not called");
    TORCH_CHECK(tokens.dim() == 1 && tokens.scalar_type() == at::kLong && tokens.device().is_cpu(),
                "DecodePlan.step_tokens: tokens must be int64 [B]");
    const int64_t B = tokens.size(0);
    check_caches(k_cache, v_cache, B, slot);
    TORCH_CHECK(positions.dim() == 2 && positions.scalar_type() == at::kLong && positions.size(0) == B &&
                    positions.size(1) > slot && positions.device().is_cpu(),
                "DecodePlan.step_tokens: positions must be int64 [B, T] with T > slot");
    TORCH_CHECK(key_valid.dim() == 2 && key_valid.scalar_type() == at::kBool && key_valid.size(0) == B &&
                    key_valid.size(1) > slot && key_valid.device().is_cpu(),
                "DecodePlan.step_tokens: key_valid must be bool [B, T] with T > slot");
    int64_t* amax = nullptr;
    if (argmax.has_value() && argmax->defined()) {
      TORCH_CHECK(argmax->dim() == 1 && argmax->size(0) == B && argmax->scalar_type() == at::kLong && argmax->is_contiguous(),
                  "DecodePlan.step_tokens: argmax must be a contiguous int64 [B]");
      amax = argmax->data_ptr<int64_t>();
    }
    const auto tok = tokens.accessor<int64_t, 1>();
    const auto pos = positions.accessor<int64_t, 2>();
    const Lin& table = lins_[embed_];
    at::Tensor x = at::empty({B, D_}, at::kFloat);
    float* xp = x.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(tok[b] >= 0 && tok[b] < table.N, "DecodePlan.step_tokens: token ", tok[b], " is outside the vocabulary of ", table.N);
      embed_row(table, tok[b], xp + b * D_);
      if (pos_.defined()) {
        const int64_t p = std::max<int64_t>(0, pos[b][slot]) + pos_offset_;
        TORCH_CHECK(p < pos_.size(0), "DecodePlan.step_tokens: position ", p, " is past the learned positions");
        const float* pr = pos_.data_ptr<float>() + p * D_;
        for (int64_t k = 0; k < D_; ++k) xp[b * D_ + k] += pr[k];
      }
    }
    // rope: each row's cos and signed sin from the plan's tables (rope_rows)
    const int64_t rd = inv_freq_.defined() ? 2 * inv_freq_.numel() : 0;
    std::vector<float> cs(B * rd), sn(B * rd);
    if (rd) {
      std::lock_guard<std::mutex> lock(rope_mutex_);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t p = pos[b][slot];
        TORCH_CHECK(p >= 0, "DecodePlan.step_tokens: negative position ", p);
        const std::vector<float>& block = rope_block(p / ROPE_BLOCK);
        const float* row = block.data() + (p % ROPE_BLOCK) * 2 * rd;
        std::copy(row, row + rd, cs.data() + b * rd);
        std::copy(row + rd, row + 2 * rd, sn.data() + b * rd);
      }
    }
    const int64_t L = slot + 1;
    std::vector<uint8_t> windowed;  // the mask within the window, when there is one
    Inputs in{cs.data(), sn.data(), rd, key_valid.data_ptr<bool>(), key_valid.stride(0), key_valid.stride(1), L, amax};
    if (window > 0) {
      const auto kv = key_valid.accessor<bool, 2>();
      windowed.resize(B * L);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t l = 0; l < L; ++l) windowed[b * L + l] = kv[b][l] && slot - l < window;
      in.mask = reinterpret_cast<const bool*>(windowed.data());
      in.ms0 = L;
      in.ms3 = 1;
    }
    return dispatch(x, k_cache, v_cache, slot, in);
  }

  // The step, the caches of element type T (float or at::Half: the new rows rounded to it when written).
  template <typename T>
  at::Tensor run_step(const at::Tensor& x, T* kc, T* vc, int64_t Lmax, int64_t slot, const Inputs& in) {
    const int64_t B = x.size(0), NL = static_cast<int64_t>(layers_.size()), L = in.L, rd = in.rd;
    const int64_t heads = H_ + 2 * KV_, V = lins_[head_].N;
    int64_t widest = std::max(D_, H_ * hd_), nmax = D_;
    for (const Lin& l : lins_) {
      widest = std::max(widest, l.K);
      if (&l != &lins_[head_]) nmax = std::max(nmax, l.N);
    }
    at::Tensor res = x.clone();                                  // the residual stream
    // h: a linear's input (norm, attention or MLP activation output); h2: the MLP's normalized input
    std::vector<float> h(B * widest), h2(B * D_), qkv(B * heads * hd_), y(B * nmax);
    at::Tensor logits = at::empty({B, V}, x.options());
    RoundedRows rounded;  // the rounded input of the current linear (each thread its rows, between barriers)
    rounded.reserve(B, widest, act_bits_ == 16);
    RoundedRows plain;  // and for the plain parts of a linear with mixed layouts (Lin::mixed_layouts)
    for (const Lin& l : lins_)
      if (l.mixed_layouts()) plain.reserve(B, widest, act_bits_ == 16);

    float* rp = res.data_ptr<float>();
    float* hp = h.data();
    float* h2p = h2.data();
    float* qkvp = qkv.data();
    float* yp = y.data();
    float* out = logits.data_ptr<float>();
    const float* cp = in.cos;
    const float* sp = in.sin;
    const bool* mk = in.mask;
    const int64_t ms0 = in.ms0, ms3 = in.ms3, layer_stride = B * KV_ * Lmax * hd_;
    const bool two = act_bits_ == 16;

    const int threads = std::max(1, at::get_num_threads());
    // Attention tasks: a key/value head of a sequence with its G query heads, over one part of the slots
    // (lmforge_attn::PART), so that the threads share the work even when the heads are few.
    const int64_t G = H_ / KV_, groups = B * KV_, part_stride = hd_ + 2, C = lmforge_attn::part_count(L);
    const int64_t tasks = groups * C;
    std::vector<float> parts(B * H_ * C * part_stride);  // [B, H, C, hd + 2]
    std::vector<Best> best(in.argmax ? threads * B : 0);  // each thread's greedy token among its head rows
    // a group's heads from their parts into h; a group split between threads is merged after the barrier
    auto merge_group = [&](int64_t grp) {
      for (int64_t h = grp * G; h < (grp + 1) * G; ++h)  // h = b * H + the head: groups are G heads in a row
        lmforge_attn::merge_parts(parts.data() + h * C * part_stride, C, hd_, hp + h * hd_);
    };
#pragma omp parallel num_threads(threads)
    {
      const Team t{omp_get_thread_num(), omp_get_num_threads()};
      std::vector<float> qrot(G * hd_), p(G * lmforge_attn::PART), krot(hd_), knorm(hd_);
      auto split = [&](int64_t grp) { return t.owner(tasks, grp * C) != t.owner(tasks, (grp + 1) * C - 1); };
      auto clock = std::chrono::steady_clock::now();
      auto phase_end = [&](int phase) {  // after a barrier: thread 0 books the time since the last one
        if (!profiling_ || t.id != 0) return;
        const auto now = std::chrono::steady_clock::now();
        phase_seconds_[phase] += std::chrono::duration<double>(now - clock).count();
        clock = now;
      };
      // Between the products each thread prepares its rows of the batch (m0 .. m1 - 1): norms, the
      // gate, and the next linear's input, rounded for integer weights.
      const int64_t m0 = t.begin(B), m1 = t.end(B);
      auto prepare = [&](const Lin& l, const float* in) {
        if (l.integer()) rounded.round_rows(in, m0, m1, l.K, two, l.grouped());
        if (l.mixed_layouts()) plain.round_rows(in, m0, m1, l.K, two, 0);
      };
      auto norm_rows = [&](const Norm& n, const float* in, float* o) {
        for (int64_t m = m0; m < m1; ++m) n.apply(in + m * D_, D_, eps_, o + m * D_);
      };
      for (int64_t li = 0; li < NL; ++li) {
        const Layer& layer = layers_[li];
        const Lin &wqkv = lins_[layer.qkv], &wo = lins_[layer.o], &win = lins_[layer.in], &wout = lins_[layer.out];
        T* kl = kc + li * layer_stride;
        T* vl = vc + li * layer_stride;
        norm_rows(layer.attn_norm, rp, hp);
        if (parallel_) {  // both sublayers read the block's input
          if (layer.mlp_norm.defined()) {
            norm_rows(layer.mlp_norm, rp, h2p);
          } else {
            std::copy(hp + m0 * D_, hp + m1 * D_, h2p + m0 * D_);
          }
        }
        prepare(wqkv, hp);
        barrier();
        phase_end(0);
        Linear(wqkv, t).run(hp, rounded, B, qkvp, nullptr, two, nullptr, &plain);
        barrier();
        phase_end(1);
        for (int64_t task = t.begin(B * KV_); task < t.end(B * KV_); ++task) {  // rope k, write k and v
          const int64_t b = task / KV_, j = task % KV_;
          const float* k = qkvp + (b * heads + H_ + j) * hd_;
          const int64_t at = ((b * KV_ + j) * Lmax + slot) * hd_;
          if (layer.k_norm.defined()) {
            layer.k_norm.apply(k, hd_, eps_, knorm.data());
            k = knorm.data();
          }
          lmforge_attn::rotate(k, krot.data(), cp + b * rd, sp + b * rd, rd, hd_, interleaved_);
          lmforge_attn::store_row(krot.data(), kl + at, hd_);
          lmforge_attn::store_row(qkvp + (b * heads + H_ + KV_ + j) * hd_, vl + at, hd_);
        }
        barrier();
        phase_end(2);
        int64_t rotated = -1;  // the (row, key/value head) whose query heads qrot holds
        for (int64_t task = t.begin(tasks); task < t.end(tasks); ++task) {
          const int64_t b = task / (KV_ * C), j = task / C % KV_, c = task % C, h0 = j * G;
          if (task / C != rotated) {  // a thread takes a group's parts in turn: norm and rotate once
            for (int64_t g = 0; g < G; ++g) {
              const float* q = qkvp + (b * heads + h0 + g) * hd_;
              if (layer.q_norm.defined()) {
                layer.q_norm.apply(q, hd_, eps_, knorm.data());
                q = knorm.data();
              }
              lmforge_attn::rotate(q, qrot.data() + g * hd_, cp + b * rd, sp + b * rd, rd, hd_, interleaved_);
            }
            rotated = task / C;
          }
          const int64_t base = (b * KV_ + j) * Lmax * hd_, l0 = c * lmforge_attn::PART;
          lmforge_attn::attend_part(qrot.data(), G, kl + base, vl + base, mk + b * ms0, ms3, l0,
                                    std::min(L, l0 + lmforge_attn::PART), hd_, layer.scale,
                                    parts.data() + ((b * H_ + h0) * C + c) * part_stride, C * part_stride, p.data());
        }
        for (int64_t grp = 0; grp < groups; ++grp)  // the groups whose parts were all this thread's
          if (!split(grp) && t.owner(tasks, grp * C) == t.id) merge_group(grp);
        barrier();
        phase_end(3);
        for (int64_t grp = m0 * KV_; grp < m1 * KV_; ++grp)  // groups are (row, key/value head)
          if (split(grp)) merge_group(grp);
        prepare(wo, hp);
        barrier();
        phase_end(4);
        Linear(wo, t).run(hp, rounded, B, yp, rp, two, nullptr, &plain);
        barrier();
        phase_end(5);
        if (!parallel_) norm_rows(layer.mlp_norm, rp, h2p);
        prepare(win, h2p);
        barrier();
        phase_end(6);
        if (gated_) {
          Linear(win, t).run(h2p, rounded, B, yp, nullptr, two, nullptr, &plain);
        } else {  // fc1 and its activation, straight into the next linear's input
          Linear(win, t).run(h2p, rounded, B, hp, nullptr, two, &act_, &plain);
        }
        barrier();
        phase_end(7);
        if (gated_) {
          const int64_t hidden = win.N / 2;
          for (int64_t m = m0; m < m1; ++m)
            lmforge_dense::silu_mul_row(yp + m * win.N, yp + m * win.N + hidden, hidden, hp + m * hidden);
        }
        prepare(wout, hp);
        barrier();
        phase_end(8);
        Linear(wout, t).run(hp, rounded, B, yp, rp, two, nullptr, &plain);
        barrier();
        phase_end(9);
      }
      const Lin& head = lins_[head_];
      if (norm_.defined()) {
        norm_rows(norm_, rp, hp);
      } else {
        std::copy(rp + m0 * D_, rp + m1 * D_, hp + m0 * D_);
      }
      prepare(head, hp);
      barrier();
      phase_end(10);
      const auto rows = Linear(head, t).run(hp, rounded, B, out, nullptr, two);
      if (in.argmax) {
        for (int64_t m = 0; m < B; ++m) {
          Best b = first_max(out + m * V + rows.first, rows.second - rows.first);
          if (b.index >= 0) b.index += rows.first;
          best[t.id * B + m] = b;
        }
      }
      barrier();
      phase_end(11);
      if (in.argmax && t.id == 0) {  // the threads' rows are in order: the first of equal maxima wins
        for (int64_t m = 0; m < B; ++m) {
          Best top;
          for (int i = 0; i < t.n && !top.nan; ++i) {
            const Best& b = best[i * B + m];
            if (b.index >= 0 && (top.index < 0 || b.nan || b.value > top.value)) top = b;
          }
          in.argmax[m] = top.index;
        }
      }
    }
    return logits;
  }

  // Profiling: with it on, step() adds the wall time of each phase (thread 0's view, from barrier to
  // barrier) to PHASES counters; phase_seconds() returns them (in the order of PHASES) and resets them.
  void set_profiling(bool on) { profiling_ = on; }
  std::vector<double> phase_seconds() {
    std::vector<double> out(phase_seconds_, phase_seconds_ + PHASES);
    std::fill(phase_seconds_, phase_seconds_ + PHASES, 0.0);
    return out;
  }
  static constexpr int PHASES = 12;

 private:

  void check_caches(const at::Tensor& k_cache, const at::Tensor& v_cache, int64_t B, int64_t slot) const {
    TORCH_CHECK(head_ >= 0, "DecodePlan: set_head was not called");
    const int64_t NL = static_cast<int64_t>(layers_.size());
    for (const at::Tensor* c : {&k_cache, &v_cache}) {
      TORCH_CHECK(c->dim() == 5 && c->size(0) == NL && c->size(1) == B && c->size(2) == KV_ && c->size(4) == hd_ &&
                      (c->scalar_type() == at::kFloat || c->scalar_type() == at::kHalf) &&
                      c->scalar_type() == k_cache.scalar_type() && c->is_contiguous() && c->sizes() == k_cache.sizes(),
                  "DecodePlan: the caches must be contiguous fp32 or fp16 [layers, B, KV, Lmax, hd], both alike");
    }
    TORCH_CHECK(slot >= 0 && slot < k_cache.size(3), "DecodePlan: slot ", slot, " is outside the cache");
  }

  at::Tensor dispatch(const at::Tensor& x, at::Tensor& k_cache, at::Tensor& v_cache, int64_t slot, const Inputs& in) {
    TORCH_CHECK(in.L <= k_cache.size(3), "DecodePlan: the mask is longer than the cache");
    if (k_cache.scalar_type() == at::kHalf)
      return run_step(x, k_cache.data_ptr<at::Half>(), v_cache.data_ptr<at::Half>(), k_cache.size(3), slot, in);
    return run_step(x, k_cache.data_ptr<float>(), v_cache.data_ptr<float>(), k_cache.size(3), slot, in);
  }

  // The rope rows of positions [ROPE_BLOCK i, ROPE_BLOCK (i + 1)): per position cos [rd] then the signed
  // sin [rd], laid out as models/layers.py's rope_cos_sin makes them and computed by the same torch ops
  // (fp32 angles, torch's cos and sin, whose results do not depend on the tensor's shape), so that
  // step_tokens rotates exactly as the op-by-op path does. Made when a step first needs one and kept
  // (8 KiB a block for head size 64). Call with rope_mutex_ held.
  static constexpr int64_t ROPE_BLOCK = 256;
  const std::vector<float>& rope_block(int64_t i) {
    if (i >= static_cast<int64_t>(rope_blocks_.size())) rope_blocks_.resize(i + 1);
    std::vector<float>& block = rope_blocks_[i];
    if (!block.empty()) return block;
    const int64_t half = inv_freq_.numel(), rd = 2 * half;
    const at::Tensor angles = at::arange(i * ROPE_BLOCK, (i + 1) * ROPE_BLOCK, at::kLong).to(at::kFloat).unsqueeze(1) * inv_freq_;
    const at::Tensor c = angles.cos().contiguous(), sg = angles.sin().contiguous();
    const float* cp = c.data_ptr<float>();
    const float* sp = sg.data_ptr<float>();
    block.resize(ROPE_BLOCK * 2 * rd);
    for (int64_t r = 0; r < ROPE_BLOCK; ++r) {
      float* co = block.data() + r * 2 * rd;
      float* si = co + rd;
      for (int64_t j = 0; j < half; ++j) {
        const int64_t first = interleaved_ ? 2 * j : j, second = interleaved_ ? 2 * j + 1 : j + half;
        co[first] = co[second] = cp[r * half + j];
        si[first] = -sp[r * half + j];
        si[second] = sp[r * half + j];
      }
    }
    return block;
  }

  // out [K] = row r of the linear l's weight in fp32 (the embedding lookup)
  static void embed_row(const Lin& l, int64_t r, float* out) {
    auto decode = [&](const auto& w) { decode_row(w, r, out); };
    switch (l.kind) {
      case Kind::DENSE_F32: std::copy_n(l.w.data_ptr<float>() + r * l.K, l.K, out); return;
      case Kind::INT4: return with_int4<Int4Codes>(l.w.data_ptr<uint8_t>(), l.scales, l.mins, l.K, decode);
      default: return with_int8<Int8Codes>(l.w, l.scales, l.mins, l.K, decode);
    }
  }

  struct Layer {
    Norm attn_norm, mlp_norm, q_norm, k_norm;  // q_norm / k_norm: over each head (or undefined)
    int64_t qkv, o, in, out;
    float scale;
  };

  // a norm over `size` values (default: the model width)
  Norm make_norm(const at::Tensor& w, const c10::optional<at::Tensor>& b, int64_t size = -1) const {
    if (size < 0) size = D_;
    auto check = [&](const at::Tensor& t) {
      TORCH_CHECK(t.scalar_type() == at::kFloat && t.numel() == size && t.is_contiguous() && t.device().is_cpu(),
                  "DecodePlan: norm weights and biases must be contiguous fp32 [", size, "]");
    };
    check(w);
    Norm n{layer_norm_, w, at::Tensor()};
    if (b.has_value() && b->defined()) {
      TORCH_CHECK(layer_norm_, "DecodePlan: RMSNorm has no bias");
      check(*b);
      n.bias = *b;
    }
    return n;
  }

  int64_t D_, H_, KV_, hd_;
  float eps_;
  bool interleaved_;
  int64_t act_bits_;
  bool layer_norm_, parallel_, gated_;
  Act act_;
  std::vector<Lin> lins_;
  std::vector<Layer> layers_;
  Norm norm_;
  int64_t head_ = -1, embed_ = -1, pos_offset_ = 0;
  at::Tensor pos_, inv_freq_;  // step_tokens' learned positions and rope frequencies (undefined: none)
  std::vector<std::vector<float>> rope_blocks_;
  std::mutex rope_mutex_;
  bool profiling_ = false;
  double phase_seconds_[PHASES] = {};
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(lmforge, m) {
  m.class_<DecodePlan>("DecodePlan")
      .def(torch::init<int64_t, int64_t, int64_t, int64_t, double, bool, int64_t, std::string, bool, std::string,
                       std::string>())
      .def("add_linear", &DecodePlan::add_linear)
      .def("add_parts", &DecodePlan::add_parts)
      .def("add_layer", &DecodePlan::add_layer)
      .def("set_head", &DecodePlan::set_head)
      .def("set_qk_norm", &DecodePlan::set_qk_norm)
      .def("step", &DecodePlan::step)
      .def("set_embedding", &DecodePlan::set_embedding)
      .def("set_rope", &DecodePlan::set_rope)
      .def("takes_tokens", &DecodePlan::takes_tokens)
      .def("step_tokens", &DecodePlan::step_tokens)
      .def("set_profiling", &DecodePlan::set_profiling)
      .def("phase_seconds", &DecodePlan::phase_seconds);
}
