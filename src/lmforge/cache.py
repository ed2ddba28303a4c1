"""KV caches, static and preallocated: StaticKVCache holds every layer in one [L, B, KV, max_len, hd] tensor
for keys and one for values; LayerKVCache, for compiled steps, one buffer per layer."""
from __future__ import annotations

import copy

import torch

from .config import ModelConfig


class KVCache:
    """What the attention layers use of a cache: ``layer(i)``, the layer's key and value buffers
    [B, KV, max_len, hd] (contiguous; kernels.attention_decode writes them itself), and ``update``."""
    max_len: int
    dtype: torch.dtype

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def update(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: int):
        """Write k, v [B, KV, S, hd] at `slots` [S]; return the first kv_len slots of the cache, in k's
        dtype (a cache of another dtype, fp16 under fp32 activations, is converted on the way)."""
        ck, cv = self.layer(layer)
        ck.index_copy_(2, slots, k.to(ck.dtype))
        cv.index_copy_(2, slots, v.to(cv.dtype))
        return ck[:, :, :kv_len].to(k.dtype), cv[:, :, :kv_len].to(v.dtype)


class StaticKVCache(KVCache):
    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device):
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len, self.dtype = max_len, dtype
        self._spare: tuple[torch.Tensor, torch.Tensor] | None = None  # reorder's double buffer
        self._make_views()

    def _make_views(self):
        """Per-layer (k, v) views of k and v, made again whenever they are replaced."""
        self._views = list(zip(self.k.unbind(0), self.v.unbind(0)))

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._views[layer]

    def first_rows(self, n: int) -> "StaticKVCache":
        """A cache over the first n rows that shares this one's storage (prefill one prompt, then
        `reorder` it out to every beam)."""
        view = copy.copy(self)
        view.k, view.v = self.k[:, :n], self.v[:, :n]
        view._make_views()
        return view

    def reorder(self, index: torch.Tensor, length: int):
        """Row i becomes old row index[i] (index: [B], beam search), over the first `length` slots:
        gathered into a spare buffer allocated once, which then swaps places with the live one."""
        if self._spare is None:
            self._spare = (torch.empty_like(self.k), torch.empty_like(self.v))
        spare_k, spare_v = self._spare
        torch.index_select(self.k[:, :, :, :length], 1, index, out=spare_k[:, :, :, :length])
        torch.index_select(self.v[:, :, :, :length], 1, index, out=spare_v[:, :, :, :length])
        self._spare = (self.k, self.v)
        self.k, self.v = spare_k, spare_v
        self._make_views()


class LayerKVCache(KVCache):
    """A static cache with separate key and value buffers [B, KV, max_len, hd] per layer, for compiled
    decode steps (Engine.static_cache): a step writes each layer's buffer in place. In one tensor over
    all layers, as StaticKVCache keeps them, a write through a layer's view is compiled as a rewrite of
    the whole tensor, every layer of every step (torch.compile's functionalization of view mutations)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device):
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.max_len, self.dtype = max_len, dtype
        self.owner = None  # the generation using it (Engine.static_cache keeps it across generations)

    def buffers(self) -> list[torch.Tensor]:
        return self.keys + self.values

    def clone(self) -> "LayerKVCache":
        twin = copy.copy(self)
        twin.keys, twin.values = [k.clone() for k in self.keys], [v.clone() for v in self.values]
        return twin

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer], self.values[layer]
