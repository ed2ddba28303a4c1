"""KV caches. A static, preallocated cache: one [B, KV, L, hd] buffer per layer for keys and values."""
from __future__ import annotations

import torch

from .config import ModelConfig


class StaticKVCache:
    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device):
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len

    def update(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: int):
        """Write k, v [B, KV, S, hd] at `slots` [S]; return the first kv_len slots of the cache."""
        ck, cv = self.k[layer], self.v[layer]
        ck.index_copy_(2, slots, k)
        cv.index_copy_(2, slots, v)
        return ck[:, :, :kv_len], cv[:, :, :kv_len]

    def reorder(self, index: torch.Tensor):
        """Select batch rows (beam search)."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
