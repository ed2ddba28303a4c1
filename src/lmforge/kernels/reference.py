"""Pure-PyTorch definitions of the kernel ops: the fallback when no native build is available, and the
reference the native kernels are tested against.

Each op is the fp32 product of x with the dequantized weight; the native kernels dequantize in
registers and differ from these functions only in the fp32 summation order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

QK = 32  # columns per block
SUPER = 8  # blocks per interleaved group of the int4 and grouped int8 layouts


def _split_blocks(K: int) -> int:
    """Columns of a K-column row held in interleaved groups of 8 blocks (the rest is plain blocks)."""
    return (K // QK) // SUPER * SUPER * QK


def unpack_int4_blocks(qs: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] in the kernels' int4 order -> codes uint8 [N, K] in column order.

    A row is groups of 8 blocks (128 bytes each) followed by the blocks left over (16 bytes each).
    In a group, byte 32 t + 4 j + e holds column 8 t + e of block j in its low nibble and column
    8 t + 4 + e in its high one (t, e < 4, j < 8): every 4-byte lane of a 32-byte vector belongs to one
    block, so the kernels' integer sums come out one block per lane. A leftover block is GGUF's: byte
    i holds column i in its low nibble and column i + 16 in its high one."""
    N, K = qs.shape[0], qs.shape[1] * 2
    split = _split_blocks(K)
    lo, hi = qs & 0xF, qs >> 4
    head = torch.stack((lo[:, :split // 2], hi[:, :split // 2]), dim=-1)      # [N, split/2, h]
    head = head.reshape(N, -1, 4, SUPER, 4, 2).permute(0, 1, 3, 2, 5, 4)       # (group, t, j, e, h) -> (group, j, t, h, e)
    tail = torch.cat((lo[:, split // 2:].reshape(N, -1, QK // 2), hi[:, split // 2:].reshape(N, -1, QK // 2)), dim=-1)
    return torch.cat((head.reshape(N, split), tail.reshape(N, K - split)), dim=1)


def pack_int4_blocks(q: torch.Tensor) -> torch.Tensor:
    """codes 0..15 [N, K] in column order -> uint8 [N, K/2] in the kernels' int4 order (the inverse of
    unpack_int4_blocks)."""
    q = q.to(torch.uint8)
    N, K = q.shape
    split = _split_blocks(K)
    head = q[:, :split].reshape(N, -1, SUPER, 4, 2, 4).permute(0, 1, 3, 2, 5, 4)  # (group, j, t, h, e) -> (group, t, j, e, h)
    head = head[..., 0] | (head[..., 1] << 4)
    tail = q[:, split:].reshape(N, -1, QK)
    tail = tail[..., : QK // 2] | (tail[..., QK // 2:] << 4)
    return torch.cat((head.reshape(N, split // 2), tail.reshape(N, (K - split) // 2)), dim=1)


def gguf_int4_blocks(nibbles: torch.Tensor, rows: int = 2048) -> torch.Tensor:
    """GGUF Q4 nibble bytes uint8 [N, K/2] (every block in GGUF's order) -> the kernels' int4 order,
    `rows` rows at a time (the codes unpacked on the way stay small)."""
    out = torch.empty_like(nibbles)
    for r0 in range(0, nibbles.shape[0], rows):
        part = nibbles[r0:r0 + rows]
        blocks = part.reshape(part.shape[0], -1, QK // 2)
        out[r0:r0 + rows] = pack_int4_blocks(torch.cat((blocks & 0xF, blocks >> 4), dim=-1).reshape(part.shape[0], -1))
    return out


def pack_int8_groups(q: torch.Tensor) -> torch.Tensor:
    """int8 codes [N, K] in column order -> uint8 [N, K] in the kernels' grouped int8 order: q + 128,
    each row in groups of 8 blocks (256 bytes) where byte 32 i + 4 j + e holds column 4 i + e of block
    j (i < 8, e < 4), then the blocks left over in column order."""
    N, K = q.shape
    split = _split_blocks(K)
    u = q.contiguous().view(torch.uint8) ^ 0x80  # q + 128
    head = u[:, :split].reshape(N, -1, SUPER, SUPER, 4).transpose(2, 3)  # (group, j, i, e) -> (group, i, j, e)
    return torch.cat((head.reshape(N, split), u[:, split:]), dim=1)


def unpack_int8_groups(u: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int8_groups: uint8 [N, K] -> int8 codes [N, K] in column order."""
    N, K = u.shape
    split = _split_blocks(K)
    head = u[:, :split].reshape(N, -1, SUPER, SUPER, 4).transpose(2, 3).reshape(N, split)
    return (torch.cat((head, u[:, split:]), dim=1) ^ 0x80).view(torch.int8)  # u - 128


def int8_codes(q: torch.Tensor) -> torch.Tensor:
    """The int8 codes [N, K] in column order of either int8 layout: int8 (plain) or uint8 (grouped)."""
    return unpack_int8_groups(q) if q.dtype == torch.uint8 else q


KSCALE_BYTES = 10  # K-quant scales: bytes per 8 blocks (8 uint8 multipliers, then the fp16 step)


def pack_k_scales(step: torch.Tensor, mult: torch.Tensor) -> torch.Tensor:
    """K-quant block scales: the fp16 step d [N, G/8] of each 8 blocks and their uint8 multipliers q
    [N, G] -> uint8 [N, G/8 * 10] (per 8 blocks: q, then d's two bytes); block i's value is d * q[i]."""
    N, G = mult.shape
    d = step.to(torch.float16).contiguous().view(torch.uint8).reshape(N, G // 8, 2)
    return torch.cat((mult.to(torch.uint8).reshape(N, G // 8, 8), d), dim=-1).reshape(N, -1).contiguous()


def scale_groups(t: torch.Tensor) -> int:
    """Groups per row G of scales or mins: [N, G] fp16 / fp32, or K-quant uint8 [N, G/8 * 10]."""
    return t.shape[1] // KSCALE_BYTES * 8 if t.dtype == torch.uint8 else t.shape[1]


def block_values(t: torch.Tensor) -> torch.Tensor:
    """Scales or mins [N, G] as fp32: fp16 / fp32 as they are, K-quant uint8 [N, G/8 * 10] unpacked."""
    if t.dtype != torch.uint8:
        return t.float()
    packed = t.reshape(t.shape[0], -1, KSCALE_BYTES)
    d = packed[..., 8:].contiguous().view(torch.float16).float()
    return (packed[..., :8].float() * d).reshape(t.shape[0], -1)


def _per_column(t: torch.Tensor, K: int) -> torch.Tensor:
    """[N, G] group values (any block_values form) -> [N, K] fp32, one per column."""
    t = block_values(t)
    return t.repeat_interleave(K // t.shape[1], dim=1)


def int4_mins(scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """The mins of the int4 layout: `mins`, or -8 * scales where mins is empty [N, 0] (symmetric codes,
    GGUF Q4_0; exact in fp16: a power-of-two multiple)."""
    return mins if mins.numel() or not scales.numel() else block_values(scales) * -8


def dequantize_int4_blocks(qs: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """The weight [N, K] fp32 of the int4 kernel layout: w = q * scale + min."""
    q = unpack_int4_blocks(qs).float()
    return q * _per_column(scales, q.shape[1]) + _per_column(int4_mins(scales, mins), q.shape[1])


def dequantize_int8_blocks(q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None = None) -> torch.Tensor:
    """The weight [N, K] fp32 of an int8 kernel layout (plain int8 or grouped uint8): w = q * scale, plus
    min where the layout has mins (K-quant, GGUF Q5_K)."""
    q = int8_codes(q).float()
    w = q * _per_column(scales, q.shape[1])
    return w + _per_column(mins, q.shape[1]) if _has(mins) else w


def _has(mins: torch.Tensor | None) -> bool:
    return mins is not None and mins.numel() > 0


def int4_rows(ids: torch.Tensor, qs: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """Rows ids [...] of an int4 table [N, K] dequantized: fp32 [..., K] (an embedding lookup)."""
    flat = ids.flatten()
    rows = dequantize_int4_blocks(qs[flat], scales[flat], mins[flat])  # empty mins stay [n, 0]
    return rows.reshape(*ids.shape, rows.shape[1])


def int8_rows(ids: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Rows ids [...] of an int8 table (either layout) dequantized: fp32 [..., K]."""
    flat = ids.flatten()
    rows = dequantize_int8_blocks(q[flat], scales[flat], mins[flat] if _has(mins) else None)
    return rows.reshape(*ids.shape, rows.shape[1])


def round_activations(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x [..., K] fp32 as the kernels with act_bits = bits see it: per block of 32 values, codes
    a = round(x / d) with d = max|x| / 127; with 16 bits also the rest, b = round((x / d - a) * 254),
    so x ~ d * (a + b / 254). Returns the rounded values (fp32)."""
    blocks = x.float().unflatten(-1, (-1, QK))
    amax = blocks.abs().amax(-1, keepdim=True)
    # a true division, as the kernels do (a Python scalar over a tensor may be taken as a reciprocal)
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0).div(amax), torch.zeros_like(amax))
    t = blocks * inv
    a = torch.round(t)
    codes = a
    if bits == 16:
        codes = a + torch.round((t - a) * 254.0) / 254.0
    return (codes * (amax / 127.0)).flatten(-2)


def _activations(x: torch.Tensor, act_bits: int) -> torch.Tensor:
    if act_bits not in (32, 16, 8):
        raise ValueError(f"act_bits must be 32, 16 or 8, got {act_bits}")
    if act_bits == 32:
        return x.float()
    return round_activations(x, act_bits)


def int4_linear(x: torch.Tensor, qs: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                act_bits: int = 32) -> torch.Tensor:
    # x: [..., K] -> [..., N]. The mins multiply the exact block sums of x, so only q * scale sees the
    # rounded activation.
    mins = block_values(int4_mins(scales, mins))
    w = dequantize_int4_blocks(qs, scales, torch.zeros_like(mins)).to(x.device)
    xr = _activations(x, act_bits)
    mins_part = F.linear(x.float(), _per_column(mins, w.shape[1]).to(x.device))
    return (F.linear(xr, w) + mins_part).to(x.dtype)


def int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, act_bits: int = 32,
                mins: torch.Tensor | None = None) -> torch.Tensor:
    # x: [..., K] -> [..., N]; mins (K-quant) multiply the exact block sums of x, as int4_linear's
    y = F.linear(_activations(x, act_bits), dequantize_int8_blocks(q, scales).to(x.device))
    if _has(mins):
        y = y + F.linear(x.float(), _per_column(mins, q.shape[1]).to(x.device))
    return y.to(x.dtype)


def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # x: [..., K] -> [..., N], fp32 arithmetic
    return F.linear(x.float(), weight.float()).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def attention_decode(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor, n_heads: int, n_kv_heads: int,
                     scale: float, interleaved: bool) -> torch.Tensor:
    """Rope q and k, write k and v into the caches at ``slots``, attend over the first L slots.
    qkv [B, S, H + 2 KV, hd]; cos, sin [B, S, 1, rd] (or empty); caches [B, KV, Lmax, hd]; mask bool
    [B, 1, S, L] -> [B, S, H * hd]. A query with nothing to attend to gets zeros. fp16 caches hold the
    keys and values rounded to fp16; the attention is computed in fp32 from them."""
    B, S, _, hd = qkv.shape
    H, KV = n_heads, n_kv_heads
    qk, v = qkv[:, :, :H + KV], qkv[:, :, H + KV:]
    if cos.numel():
        rd = cos.shape[-1]
        rot = qk[..., :rd]
        if interleaved:
            partner = rot.unflatten(-1, (rd // 2, 2)).flip(-1).flatten(-2)
        else:
            partner = rot.unflatten(-1, (2, rd // 2)).flip(-2).flatten(-2)
        qk = torch.cat((rot * cos + partner * sin, qk[..., rd:]), dim=-1)
    k_cache.index_copy_(2, slots, qk[:, :, H:].transpose(1, 2).to(k_cache.dtype))
    v_cache.index_copy_(2, slots, v.transpose(1, 2).to(v_cache.dtype))
    L = mask.shape[-1]
    q = qk[:, :, :H].transpose(1, 2)                                   # [B, H, S, hd]
    k = k_cache[:, :, :L].float().repeat_interleave(H // KV, dim=1)   # [B, H, L, hd]
    vv = v_cache[:, :, :L].float().repeat_interleave(H // KV, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return (p @ vv).transpose(1, 2).reshape(B, S, H * hd)


def silu_mul(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for h = [gate | up] on the last dimension: [..., 2n] -> [..., n]."""
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up
