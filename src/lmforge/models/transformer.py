"""The one generic decoder. Every family is this module with a different ModelConfig."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from .layers import MLP, Attention, Linear, alibi_slopes, make_norm, rope_cos_sin, rope_inv_freq


@dataclass
class Batch:
    """What one forward step needs besides the token ids.

    positions: [B, S]   position ids of the new tokens (left padding taken into account)
    mask:      [B, 1, S, L] bool, True where a query may attend to a key slot
    key_pos:   [B, L]   position of every key slot (only used by ALiBi)
    slots:     [S]      cache slots the new tokens are written to (None without a cache)
    kv_len:    L, the number of key slots attended to
    """
    positions: torch.Tensor
    mask: torch.Tensor
    key_pos: torch.Tensor | None = None
    slots: torch.Tensor | None = None
    kv_len: int | None = None


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.parallel, self.post_norm = cfg.parallel_block, cfg.post_norm
        self.attn_norm = make_norm(cfg)
        self.mlp_norm = None if (cfg.parallel_block and cfg.shared_block_norm) else make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)

    def forward(self, x, *attn_args):
        if self.parallel:
            h = self.attn_norm(x)
            m = self.mlp(h if self.mlp_norm is None else self.mlp_norm(x))
            return x + self.attn(h, *attn_args) + m
        if self.post_norm:
            x = self.attn_norm(x + self.attn(x, *attn_args))
            return self.mlp_norm(x + self.mlp(x))
        x = x + self.attn(self.attn_norm(x), *attn_args)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        emb_dim = cfg.embed_proj_dim or cfg.dim
        self.embed = nn.Embedding(cfg.vocab_size, emb_dim)
        # learned positions live in the model width, added after proj_in (OPT-350m)
        self.pos_embed = nn.Embedding(cfg.max_seq_len + cfg.pos_offset, cfg.dim) if cfg.pos == "learned" else None
        self.proj_in = Linear(emb_dim, cfg.dim, bias=False) if cfg.embed_proj_dim else None
        self.embed_norm = make_norm(cfg) if cfg.embed_norm else None
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg) if cfg.final_norm else None
        self.proj_out = Linear(cfg.dim, emb_dim, bias=False) if cfg.embed_proj_dim else None
        self.lm_head = Linear(emb_dim, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.register_buffer("inv_freq", rope_inv_freq(cfg) if cfg.pos == "rope" else None, persistent=False)
        self.register_buffer("alibi", alibi_slopes(cfg.n_heads, cfg.alibi, cfg.alibi_max_bias)
                             if cfg.pos == "alibi" else None, persistent=False)

    def tie_weights(self):
        """Share the embedding table with the head (a TiedHead of a quantized table already does)."""
        if self.cfg.tie_embeddings and isinstance(self.lm_head, nn.Linear):
            self.lm_head.weight = self.embed.weight

    def init_buffers(self, device):
        """Recompute non-persistent buffers (after building on the meta device)."""
        if self.cfg.pos == "rope":
            self.inv_freq = rope_inv_freq(self.cfg).to(device)
        if self.cfg.pos == "alibi":
            self.alibi = alibi_slopes(self.cfg.n_heads, self.cfg.alibi, self.cfg.alibi_max_bias).to(device)

    def attention_bias(self, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
        """The attention mask, or for ALiBi the additive bias with -inf at masked slots."""
        if self.alibi is None:
            return batch.mask
        slopes = self.alibi[None, :, None, None]      # [1, H, 1, 1]
        key_pos = batch.key_pos[:, None, None, :]     # [B, 1, 1, L]
        if self.cfg.alibi_bf16:  # positions and products rounded to bfloat16, as in Falcon-RW
            bias = (slopes.bfloat16() * key_pos).float()
        else:
            bias = slopes * key_pos.float()             # [B, H, 1, L]
        if self.cfg.alibi_scaled:
            bias = bias * self.layers[0].attn.scale
        return bias.masked_fill(~batch.mask, float("-inf")).to(dtype)

    def embed_input(self, tokens: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The input of the first layer [B, S, D]: token (and learned position) embeddings."""
        x = self.embed(tokens)
        if self.proj_in is not None:
            x = self.proj_in(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed(batch.positions.clamp(min=0) + self.cfg.pos_offset)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return x

    def forward(self, tokens: torch.Tensor, batch: Batch, cache=None, last_only: bool = False) -> torch.Tensor:
        # tokens: [B, S] -> logits [B, S, V] (fp32), or [B, 1, V] with last_only
        x = self.embed_input(tokens, batch)
        rope = rope_cos_sin(self.inv_freq, batch.positions, self.cfg.rope_interleaved) if self.inv_freq is not None else None
        bias = self.attention_bias(batch, x.dtype)
        for layer in self.layers:
            x = layer(x, rope, self.cfg.rope_interleaved, bias, cache, batch.slots, batch.kv_len)
        if last_only:
            x = x[:, -1:]
        if self.norm is not None:
            x = self.norm(x)
        if self.proj_out is not None:
            x = self.proj_out(x)
        return self.lm_head(x).float()

    def decode_native(self, plan, tokens: torch.Tensor, batch: Batch, cache) -> torch.Tensor:
        """forward(tokens [B, 1], last_only=True) through a native DecodePlan (see native_step)."""
        x = self.embed_input(tokens, batch)[:, 0].float().contiguous()
        if self.inv_freq is not None:
            cos, sin = rope_cos_sin(self.inv_freq, batch.positions, self.cfg.rope_interleaved)
        else:
            cos = sin = x.new_empty(0)
        return plan.step(x, cos, sin, cache.k, cache.v, int(batch.slots[0]), batch.mask)[:, None]
