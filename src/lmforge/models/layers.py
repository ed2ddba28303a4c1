"""Building blocks of the generic decoder: norms, rotary embeddings, ALiBi, attention, MLP."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..config import ModelConfig


class Linear(nn.Linear):
    """nn.Linear whose decode-sized products (a few rows on the CPU) run lmforge's dense kernel, which
    reads the weight at the machine's bandwidth where ATen's GEMM does not, and so do a prompt's fp32
    rows where the native build has its prompt kernel (see lmforge.kernels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and self.weight.is_contiguous() and self.weight.dtype in kernels.DENSE_DTYPES
                and kernels.backend() == "native"):
            # bf16 activations stay with ATen for prompts: its AVX-512 BF16 products outrun the prompt
            # kernel there (509 against 321 GFLOP/s on Zen 5, benchmarks/RESULTS.md). dense_linear hands
            # the prompts its kernel does not take (too many rows) to ATen's GEMM itself.
            if x.numel() <= kernels.DENSE_MAX_ROWS * self.in_features or (
                    x.dtype == torch.float32 and kernels.dense_prompt_kernel()):
                y = kernels.dense_linear(x, self.weight)
                return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype == self.weight.dtype == torch.float32 and x.device.type == "cpu"
                and kernels.backend() == "native"):
            return kernels.rms_norm(x, self.weight, self.eps)
        # normalized in fp32, cast back, then scaled: the order of transformers' Llama RMSNorm
        xf = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.dim
    if cfg.norm == "rms":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.norm_bias)


ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


# ----------------------------------------------------------------------------------------- rotary

def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [rotary_dim // 2], with the config's rope scaling applied."""
    rd = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, rd, 2, dtype=torch.int64).float() / rd))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in ("default", None):
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise NotImplementedError(f"rope scaling {kind!r} is not supported (supported: linear, llama3)")


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, interleaved: bool):
    """cos and signed sin, each [B, S, 1, rotary_dim] (fp32), for positions [B, S] and x [B, S, heads, hd].

    The rotation of a channel pair (a, b) is (a cos - b sin, b cos + a sin): with the pair partners
    swapped (``swap_pairs``) and the sine negated on the first member, it is x * cos + swap(x) * sin."""
    freqs = positions[..., None].float() * inv_freq  # [B, S, rd/2]
    if interleaved:  # pairs are neighbouring channels (2i, 2i + 1)
        cos = freqs.cos().repeat_interleave(2, dim=-1)
        sin = torch.stack((-freqs.sin(), freqs.sin()), dim=-1).flatten(-2)
    else:  # pairs are channels (i, i + rd/2)
        c, s = freqs.cos(), freqs.sin()
        cos = torch.cat((c, c), dim=-1)
        sin = torch.cat((-s, s), dim=-1)
    return cos[:, :, None], sin[:, :, None]


def swap_pairs(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Each rotary channel replaced by its pair partner: (x_{i+rd/2}, x_i) or (x_{2i+1}, x_{2i})."""
    rd = x.shape[-1]
    if interleaved:
        return x.unflatten(-1, (rd // 2, 2)).flip(-1).flatten(-2)
    return x.unflatten(-1, (2, rd // 2)).flip(-2).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate the first rotary_dim channels of x [B, S, heads, hd]; the rest pass through."""
    rd = cos.shape[-1]
    xr = x if rd == x.shape[-1] else x[..., :rd]
    out = xr.float() * cos + swap_pairs(xr.float(), interleaved) * sin
    out = out.to(x.dtype)
    return out if rd == x.shape[-1] else torch.cat((out, x[..., rd:]), dim=-1)


# ------------------------------------------------------------------------------------------ ALiBi

def alibi_slopes(n_heads: int, style: str = "bloom", max_bias: float = 8.0) -> torch.Tensor:
    if style == "mpt":
        p2 = 2 ** math.ceil(math.log2(n_heads))
        base = torch.arange(1, p2 + 1, dtype=torch.float32) * (max_bias / p2)
        slopes = 1.0 / torch.pow(2, base)
        if p2 != n_heads:
            slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
        return slopes
    p2 = 2 ** math.floor(math.log2(n_heads))
    base = 2 ** (-(2 ** -(math.log2(p2) - 3)))
    slopes = torch.pow(torch.tensor(base), torch.arange(1, 1 + p2, dtype=torch.float32))
    if p2 != n_heads:
        extra_base = 2 ** (-(2 ** -(math.log2(2 * p2) - 3)))
        n_rest = min(p2, n_heads - p2)
        extra = torch.pow(torch.tensor(extra_base), torch.arange(1, 1 + 2 * n_rest, 2, dtype=torch.float32))
        slopes = torch.cat([slopes, extra])
    return slopes


# -------------------------------------------------------------------------------------- attention

class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else 1.0 / math.sqrt(cfg.head_dim)
        if cfg.attn_scale_by_layer:
            self.scale /= layer + 1
        self.clip = cfg.clip_qkv
        self.wqkv = Linear(cfg.dim, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
        self.wo = Linear(cfg.q_size, cfg.dim, bias=cfg.o_bias)
        self.q_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else None

    def fused_decode(self, qkv: torch.Tensor, bias_or_mask: torch.Tensor, cache) -> bool:
        """Whether this step goes to kernels.attention_decode: a few new fp32 tokens on the CPU, a
        boolean mask (not ALiBi), a static cache, no q/k norms."""
        return (qkv.shape[1] <= kernels.DECODE_ATTENTION_MAX_TOKENS and qkv.device.type == "cpu"
                and qkv.dtype == torch.float32 and bias_or_mask.dtype == torch.bool and self.q_norm is None
                and hasattr(cache, "layer") and cache.dtype in kernels.KV_CACHE_DTYPES
                and kernels.backend() == "native")

    def forward(self, x, rope, interleaved, bias_or_mask, cache, slots, kv_len):
        # x: [B, S, D]
        B, S, _ = x.shape
        H, KV = self.n_heads, self.n_kv
        qkv = self.wqkv(x)
        if self.clip is not None:
            qkv = qkv.clamp(-self.clip, self.clip)
        qkv = qkv.view(B, S, H + 2 * KV, self.hd)
        if self.fused_decode(qkv, bias_or_mask, cache):  # rope, cache write and attention in one op
            cos, sin = rope if rope is not None else (qkv.new_empty(0), qkv.new_empty(0))
            y = kernels.attention_decode(qkv, cos, sin, *cache.layer(self.layer), slots, bias_or_mask,
                                         H, KV, self.scale, interleaved)
            return self.wo(y)
        qk, v = qkv[:, :, :H + KV], qkv[:, :, H + KV:]             # [B, S, H + KV, hd], [B, S, KV, hd]
        if self.q_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :, :H]), self.k_norm(qk[:, :, H:])), dim=2)
        if rope is not None:  # q and k rotate together
            qk = apply_rope(qk, *rope, interleaved)
        q = qk[:, :, :H].transpose(1, 2)                           # [B, H, S, hd]
        k = qk[:, :, H:].transpose(1, 2)                           # [B, KV, S, hd]
        v = v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer, slots, k, v, kv_len)  # [B, KV, L, hd]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias_or_mask, scale=self.scale, enable_gqa=self.n_kv != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(B, S, self.n_heads * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.mlp == "gated"
        self.hidden = cfg.hidden_dim
        n_in = 2 * cfg.hidden_dim if self.gated else cfg.hidden_dim
        self.w_in = Linear(cfg.dim, n_in, bias=cfg.mlp_bias)   # gated: [gate; up] fused
        self.w_out = Linear(cfg.hidden_dim, cfg.dim, bias=cfg.mlp_bias)
        self.act = ACTIVATIONS[cfg.act]

    def forward(self, x):
        h = self.w_in(x)
        if self.gated and self.act is F.silu and h.dtype == torch.float32 and h.device.type == "cpu" \
                and kernels.backend() == "native":
            h = kernels.silu_mul(h)  # one pass instead of split, silu and mul
        elif self.gated:
            gate, up = h.split(self.hidden, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.w_out(h)
