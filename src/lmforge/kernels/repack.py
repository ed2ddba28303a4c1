"""Repack weights from their stored formats into the kernel layouts (see the package docstring).

GGUF blocks (ggml's ``block_q4_0`` / ``block_q4_1`` / ``block_q8_0``, 32 weights each, little-endian), as
``GGUFReader`` exposes a 2-D tensor: ``tensor.data`` is uint8 [N, K/32 * block_bytes]:

- Q4_0, 18 bytes: d fp16 | 16 bytes of nibbles;                   w = d * (q - 8)
- Q4_1, 20 bytes: d fp16 | m fp16 | 16 bytes of nibbles;          w = d * q + m
- Q8_0, 34 bytes: d fp16 | 32 int8 codes;                         w = d * q
  In the nibble bytes, byte j holds weight j in its low nibble and weight j + 16 in its high one.

lmforge's own formats (``quant.formats``): int4 (packed pairs of columns, scales and integer zeros per
group, w = (q - z) * s) and int8 (per-channel scales, w = q * s).
"""
from __future__ import annotations

import torch

from .reference import QK, gguf_int4_blocks, pack_int4_blocks, pack_int8_groups

Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES = 18, 20, 34


def _blocks(raw: torch.Tensor, block_bytes: int, kind: str) -> torch.Tensor:
    """GGUF tensor bytes uint8 [N, K/32 * block_bytes] -> [N, K/32, block_bytes]."""
    raw = torch.as_tensor(raw)
    if raw.dtype != torch.uint8 or raw.dim() != 2 or raw.shape[1] % block_bytes:
        raise ValueError(f"{kind} data must be uint8 [N, K/32 * {block_bytes}], got {raw.dtype} "
                         f"{tuple(raw.shape)}")
    return raw.reshape(raw.shape[0], -1, block_bytes)


def _fp16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 field at byte ``offset`` of every block -> float16 [N, K/32]."""
    return blocks[..., offset:offset + 2].contiguous().view(torch.float16).squeeze(-1)


def _nibbles(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The 16 nibble bytes of every block -> uint8 [N, K/2] in the kernels' int4 order."""
    return gguf_int4_blocks(blocks[..., offset:offset + QK // 2].reshape(blocks.shape[0], -1)).contiguous()


def repack_gguf_q4_0(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GGUF Q4_0 bytes -> (qs uint8 [N, K/2], scales fp16 [N, K/32], mins fp16 [N, 0]): empty mins say
    min = -8 d (symmetric codes), which the kernels compute instead of reading."""
    blocks = _blocks(raw, Q4_0_BYTES, "Q4_0")
    d = _fp16(blocks, 0)
    return _nibbles(blocks, 2), d.contiguous(), d.new_empty((d.shape[0], 0))


def repack_gguf_q4_1(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GGUF Q4_1 bytes -> (qs uint8 [N, K/2], scales fp16 [N, K/32], mins fp16 [N, K/32])."""
    blocks = _blocks(raw, Q4_1_BYTES, "Q4_1")
    return _nibbles(blocks, 4), _fp16(blocks, 0).contiguous(), _fp16(blocks, 2).contiguous()


def repack_gguf_q8_0(raw: torch.Tensor, grouped: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GGUF Q8_0 bytes -> (q, scales fp16 [N, K/32]): q uint8 [N, K] in the grouped int8 order, or int8
    [N, K] plain. By default grouped where the native kernels have VNNI, whose products take the
    grouped codes as they are; plain elsewhere, where the grouped ones cost more at batch > 1
    (benchmarks/RESULTS.md)."""
    blocks = _blocks(raw, Q8_0_BYTES, "Q8_0")
    q = blocks[..., 2:].contiguous().view(torch.int8).reshape(blocks.shape[0], -1)
    if grouped is None:
        from . import backend
        from .build import builds_vnni

        grouped = backend() == "native" and builds_vnni()
    if grouped:
        q = pack_int8_groups(q)
    return q.contiguous(), _fp16(blocks, 0).contiguous()


def repack_int4(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lmforge int4 (uint8 [N, K/2] column pairs, scales [N, G], zeros [N, G]) -> (qs uint8 [N, K/2],
    scales fp32 [N, G], mins fp32 [N, G]) with min = -z * s, or empty mins [N, 0] when every zero point
    is 8 (symmetric quantization: the kernels then compute min = -8 s). The group size must be a
    multiple of 32."""
    from ..quant.formats import unpack_int4

    K = packed.shape[1] * 2
    if (K // scales.shape[1]) % QK:
        raise ValueError(f"the kernels need a group size that is a multiple of {QK}, got {K // scales.shape[1]}")
    s = scales.float().contiguous()
    mins = s.new_empty((s.shape[0], 0)) if bool((zeros == 8).all()) else (-zeros.float() * s).contiguous()
    return pack_int4_blocks(unpack_int4(packed)), s, mins


def repack_int8(q: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lmforge int8 (int8 [N, K], per-channel scales [N]) -> (q int8 [N, K], scales fp32 [N, 1]),
    one group of K columns per row. K must be a multiple of 32."""
    if q.shape[1] % QK:
        raise ValueError(f"the kernels need K to be a multiple of {QK}, got {q.shape[1]}")
    return q.contiguous(), scales.float().reshape(-1, 1).contiguous()
