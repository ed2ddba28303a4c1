"""Pure-PyTorch definitions of the kernel ops: the fallback when no native build is available, and the
reference the native kernels are tested against.

Each op is the fp32 product of x with the dequantized weight; the native kernels dequantize in
registers and differ from these functions only in the fp32 summation order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

QK = 32  # columns per block


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
    return F.linear(x.float(), dequantize_int4_blocks(qs, scales, mins).to(x.device)).to(x.dtype)


def int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    # x: [..., K] -> [..., N]
    return F.linear(x.float(), dequantize_int8_blocks(q, scales).to(x.device)).to(x.dtype)


def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # x: [..., K] -> [..., N], fp32 arithmetic
    return F.linear(x.float(), weight.float()).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
