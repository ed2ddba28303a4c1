"""Building blocks of the generic decoder: norms, rotary embeddings, ALiBi, attention, MLP."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
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
    """cos, sin of shape [B, 1, S, rotary_dim] for positions [B, S] (fp32)."""
    freqs = positions[..., None].float() * inv_freq  # [B, S, rd/2]
    emb = freqs.repeat_interleave(2, dim=-1) if interleaved else torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[:, None], emb.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate the first rotary_dim channels of x [B, H, S, hd]; the rest pass through."""
    rd = cos.shape[-1]
    xr, xp = x[..., :rd], x[..., rd:]
    if interleaved:
        rot = torch.stack((-xr[..., 1::2], xr[..., ::2]), dim=-1).flatten(-2)
    else:
        half = rd // 2
        rot = torch.cat((-xr[..., half:], xr[..., :half]), dim=-1)
    out = (xr.float() * cos + rot.float() * sin).to(x.dtype)
    return torch.cat((out, xp), dim=-1) if xp.shape[-1] else out


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
        self.wqkv = nn.Linear(cfg.dim, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.q_size, cfg.dim, bias=cfg.o_bias)
        self.q_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else None

    def forward(self, x, rope, interleaved, bias_or_mask, cache, slots, kv_len):
        # x: [B, S, D]
        B, S, _ = x.shape
        qkv = self.wqkv(x)
        if self.clip is not None:
            qkv = qkv.clamp(-self.clip, self.clip)
        q, k, v = qkv.split([self.n_heads * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], dim=-1)
        q = q.view(B, S, self.n_heads, self.hd).transpose(1, 2)   # [B, H, S, hd]
        k = k.view(B, S, self.n_kv, self.hd).transpose(1, 2)      # [B, KV, S, hd]
        v = v.view(B, S, self.n_kv, self.hd).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q = apply_rope(q, cos, sin, interleaved)
            k = apply_rope(k, cos, sin, interleaved)
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
        self.w_in = nn.Linear(cfg.dim, n_in, bias=cfg.mlp_bias)   # gated: [gate; up] fused
        self.w_out = nn.Linear(cfg.hidden_dim, cfg.dim, bias=cfg.mlp_bias)
        self.act = ACTIVATIONS[cfg.act]

    def forward(self, x):
        h = self.w_in(x)
        if self.gated:
            gate, up = h.split(self.hidden, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.w_out(h)
