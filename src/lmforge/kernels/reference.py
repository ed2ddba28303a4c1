"""Pure-PyTorch definitions of the kernel ops: the fallback when no native build is available, and the
reference the native kernels are tested against.

Both ops quantize the activation row to int8 per 32-column block (d = absmax / 127, codes round(x * 127 /
absmax), half to even) and multiply it with the dequantized weight; the native kernels compute the same
products exactly in int32 and differ from these functions only in the fp32 summation order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

QK = 32  # columns per block


def quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> the fp32 values x takes after int8 quantization per 32-column block."""
    xb = x.float().reshape(*x.shape[:-1], -1, QK)  # [..., K/32, 32]
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return (torch.round(xb * inv) * (amax / 127.0)).reshape(x.shape)


def unpack_int4_blocks(qs: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] in block nibble order -> codes uint8 [N, K] in column order."""
    blocks = qs.reshape(qs.shape[0], -1, QK // 2)  # [N, K/32, 16]
    return torch.cat((blocks & 0xF, blocks >> 4), dim=-1).reshape(qs.shape[0], -1)


def pack_int4_blocks(q: torch.Tensor) -> torch.Tensor:
    """codes 0..15 [N, K] in column order -> uint8 [N, K/2] in block nibble order (inverse of unpack)."""
    blocks = q.to(torch.uint8).reshape(q.shape[0], -1, QK)  # [N, K/32, 32]
    return (blocks[..., : QK // 2] | (blocks[..., QK // 2:] << 4)).reshape(q.shape[0], -1)


def _per_column(t: torch.Tensor, K: int) -> torch.Tensor:
    """[N, G] group values -> [N, K] fp32, one per column."""
    return t.float().repeat_interleave(K // t.shape[1], dim=1)


def dequantize_int4_blocks(qs: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """The weight [N, K] fp32 of the int4 kernel layout: w = q * scale + min."""
    q = unpack_int4_blocks(qs).float()
    return q * _per_column(scales, q.shape[1]) + _per_column(mins, q.shape[1])


def dequantize_int8_blocks(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The weight [N, K] fp32 of the int8 kernel layout: w = q * scale."""
    return q.float() * _per_column(scales, q.shape[1])


def int4_linear(x: torch.Tensor, qs: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    # x: [..., K] -> [..., N]
    w = dequantize_int4_blocks(qs, scales, mins)
    return F.linear(quantize_activation(x), w.to(x.device)).to(x.dtype)


def int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    # x: [..., K] -> [..., N]
    w = dequantize_int8_blocks(q, scales)
    return F.linear(quantize_activation(x), w.to(x.device)).to(x.dtype)
