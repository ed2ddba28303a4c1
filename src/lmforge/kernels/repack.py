"""Repack weights from their stored formats into the kernel layouts (see the package docstring).

GGUF blocks (ggml's ``block_q4_0`` / ``block_q4_1`` / ``block_q8_0``, 32 weights each, little-endian), as
``GGUFReader`` exposes a 2-D tensor: ``tensor.data`` is uint8 [N, K/32 * block_bytes]:

- Q4_0, 18 bytes: d fp16 | 16 bytes of nibbles;                   w = d * (q - 8)
- Q4_1, 20 bytes: d fp16 | m fp16 | 16 bytes of nibbles;          w = d * q + m
- Q8_0, 34 bytes: d fp16 | 32 int8 codes;                         w = d * q
  In the nibble bytes, byte j holds weight j in its low nibble and weight j + 16 in its high one.
- Q5_0, 22 bytes: d fp16 | 4 bytes qh | 16 bytes of nibbles;     w = d * (q - 16)
  q's low 4 bits are in the nibbles as in Q4_0, bit 4 of weight j is bit j of qh (little-endian), so
  q - 16 in -16..15 is an int8 code: a Q5_0 weight becomes a Q8_0-style int8 block, exactly.
- Q4_K, 144 bytes per 256 weights (8 sub-blocks of 32): d fp16 | dmin fp16 | 12 bytes of 6-bit sub-block
  scales sc and mins m | 128 bytes of nibbles;                     w = d * sc * q - dmin * m
  Byte i of 64-weight chunk c (32 bytes) holds weight 64 c + i in its low nibble and 64 c + 32 + i in
  its high one. Each sub-block becomes an int4 block whose scale is d * sc and min -dmin * m, kept as
  K-quant scales (the steps d, -dmin and the 6-bit sc, m; exact in fp32, 11 x 6 significant bits).
- Q6_K, 210 bytes per 256 weights (16 sub-blocks of 16): 128 bytes ql (low 4 bits) | 64 bytes qh (top 2
  bits) | 16 int8 sub-block scales sc | d fp16;                    w = d * sc * (q - 32)
  Each 128-weight half takes 64 bytes of ql and 32 of qh: weight 32 k + l (k < 4, l < 32) has its low
  bits in the low (k < 2) or high nibble of ql byte 32 (k % 2) + l and its top bits at bit 2k of qh
  byte l. q - 32 in -32..31 is an int8 code (negated where d * sc < 0: -32..32) and |d| * |sc| a
  K-quant scale (the step |d|, the multiplier |sc| <= 128): a Q6_K weight becomes int8 (plain or
  grouped) with K-quant half-block scales, one per 16 columns, exactly.
- Q5_K, 176 bytes per 256 weights (8 sub-blocks of 32): d fp16 | dmin fp16 | 12 bytes of sc and m as in
  Q4_K | 32 bytes qh | 128 bytes of nibbles as in Q4_K;         w = d * sc * q - dmin * m
  Bit 4 of weight 64 c + 32 h + l (h < 2, l < 32) is bit 2c + h of qh byte l. The 5-bit q in 0..31 is an
  int8 code, and each sub-block a block with Q4_K's K-quant scale and min: int8 with mins.

lmforge's own formats (``quant.formats``): int4 (packed pairs of columns, scales and integer zeros per
group, w = (q - z) * s) and int8 (per-channel scales, w = q * s).
"""
from __future__ import annotations

import torch

from .reference import KSCALE_BYTES, QK, gguf_int4_blocks, pack_int4_blocks, pack_int8_groups, pack_k_scales

Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, Q8_0_BYTES, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES = 18, 20, 22, 34, 144, 176, 210
QK_K = 256  # weights per K-quant super-block


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


def q4_k_scales_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 12 bytes of 6-bit Q4_K scales and mins [..., 12] -> (sc, m) uint8 [..., 8]. Bytes 0-3 hold sc
    0-3, bytes 4-7 m 0-3 (low 6 bits each); sub-blocks 4-7 take their low 4 bits from bytes 8-11 (sc in
    the low nibble, m in the high one) and their top 2 bits from the top bits of bytes 0-3 (sc) and 4-7 (m)."""
    lo, mid, top = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = torch.cat((lo & 0x3F, (top & 0x0F) | ((lo >> 6) << 4)), dim=-1)
    m = torch.cat((mid & 0x3F, (top >> 4) | ((mid >> 6) << 4)), dim=-1)
    return sc, m


def _super_blocks(raw: torch.Tensor, block_bytes: int, kind: str) -> tuple[torch.Tensor, int, int]:
    """GGUF K-quant bytes uint8 [N, K/256 * block_bytes] -> (them as a tensor, N, super-blocks per row)."""
    raw = torch.as_tensor(raw)
    if raw.dtype != torch.uint8 or raw.dim() != 2 or raw.shape[1] % block_bytes:
        raise ValueError(f"{kind} data must be uint8 [N, K/256 * {block_bytes}], got {raw.dtype} {tuple(raw.shape)}")
    return raw, raw.shape[0], raw.shape[1] // block_bytes


def _k_scales_mins(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K super-blocks uint8 [n, nsuper, bytes] (d, dmin and the 12 bytes of sc and m first) ->
    their K-quant scales d * sc and mins -dmin * m, uint8 [n, nsuper * 10] each."""
    n, nsuper = blocks.shape[:2]
    d = blocks[..., 0:2].contiguous().view(torch.float16).reshape(n, nsuper)
    dmin = blocks[..., 2:4].contiguous().view(torch.float16).reshape(n, nsuper)
    sc, m = q4_k_scales_mins(blocks[..., 4:16])
    return pack_k_scales(d, sc.reshape(n, -1)), pack_k_scales(-dmin, m.reshape(n, -1))


def repack_gguf_q4_k(raw: torch.Tensor, rows: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GGUF Q4_K bytes -> (qs uint8 [N, K/2], scales, mins K-quant uint8 [N, K/256 * 10]): each 32-weight
    sub-block an int4 block with scale d * sc and min -dmin * m (the same weights, see the module
    docstring; ``reference.pack_k_scales``). `rows` rows at a time, so that the unpacked codes stay small."""
    raw, N, nsuper = _super_blocks(raw, Q4_K_BYTES, "Q4_K")
    qs = torch.empty(N, nsuper * QK_K // 2, dtype=torch.uint8)
    scales = torch.empty(N, nsuper * KSCALE_BYTES, dtype=torch.uint8)
    mins = torch.empty_like(scales)
    for r0 in range(0, N, rows):
        blocks = raw[r0:r0 + rows].reshape(-1, nsuper, Q4_K_BYTES)
        n = blocks.shape[0]
        scales[r0:r0 + n], mins[r0:r0 + n] = _k_scales_mins(blocks)
        nib = blocks[..., 16:].reshape(n, nsuper, 4, 1, 32)                   # chunk c: low nibbles, then high
        codes = torch.cat((nib & 0x0F, nib >> 4), dim=3).reshape(n, -1)        # [n, K] in column order
        qs[r0:r0 + n] = pack_int4_blocks(codes)
    return qs, scales, mins


def repack_gguf_q6_k(raw: torch.Tensor, rows: int = 2048, grouped: bool | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """GGUF Q6_K bytes -> (q in the int8 layout of repack_gguf_q8_0, K-quant half-block scales uint8
    [N, K/128 * 10]): the codes q - 32 and one scale d * sc per 16 columns (the same weights, see the
    module docstring), the sign of d * sc moved onto the codes so that the scale is |d| * |sc|
    (``reference.pack_k_scales`` with one record per 8 half blocks). `rows` rows at a time, so that the
    unpacked codes stay small."""
    raw, N, nsuper = _super_blocks(raw, Q6_K_BYTES, "Q6_K")
    grouped = _grouped(grouped)
    q = torch.empty(N, nsuper * QK_K, dtype=torch.uint8 if grouped else torch.int8)
    scales = torch.empty(N, nsuper * 2 * KSCALE_BYTES, dtype=torch.uint8)
    for r0 in range(0, N, rows):
        blocks = raw[r0:r0 + rows].reshape(-1, nsuper, Q6_K_BYTES)
        n = blocks.shape[0]
        ql = blocks[..., :128].reshape(n, nsuper, 2, 2, 32)                 # half, k % 2, l
        qh = blocks[..., 128:192].reshape(n, nsuper, 2, 1, 32)              # half, -, l
        low = torch.cat((ql & 0x0F, ql >> 4), dim=3)                       # k = 0..3
        high = (qh >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(4, 1)) & 3
        codes = ((low | (high << 4)).to(torch.int16) - 32).reshape(n, nsuper, 16, 16)
        sc = blocks[..., 192:208].contiguous().view(torch.int8).to(torch.int16)  # [n, nsuper, 16]
        d = blocks[..., 208:210].contiguous().view(torch.float16)               # [n, nsuper, 1]
        negative = (sc < 0) ^ (d < 0)                                            # the sign of d * sc
        codes = torch.where(negative[..., None], -codes, codes)                  # -32..32
        q[r0:r0 + n] = _int8_layout(codes.to(torch.int8).reshape(n, -1), grouped)
        steps = d.abs().reshape(n, nsuper).repeat_interleave(2, dim=1)           # one per record of 8
        scales[r0:r0 + n] = pack_k_scales(steps, sc.abs().reshape(n, -1))
    return q, scales


def repack_gguf_q5_k(raw: torch.Tensor, rows: int = 2048, grouped: bool | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GGUF Q5_K bytes -> (q, codes 0..31 in the int8 layout of repack_gguf_q8_0; scales, mins K-quant
    uint8 [N, K/256 * 10]): each 32-weight sub-block a block of int8 codes with scale d * sc and min
    -dmin * m (the same weights, see the module docstring). `rows` rows at a time, so that the unpacked
    codes stay small."""
    raw, N, nsuper = _super_blocks(raw, Q5_K_BYTES, "Q5_K")
    grouped = _grouped(grouped)
    q = torch.empty(N, nsuper * QK_K, dtype=torch.uint8 if grouped else torch.int8)
    scales = torch.empty(N, nsuper * KSCALE_BYTES, dtype=torch.uint8)
    mins = torch.empty_like(scales)
    for r0 in range(0, N, rows):
        blocks = raw[r0:r0 + rows].reshape(-1, nsuper, Q5_K_BYTES)
        n = blocks.shape[0]
        scales[r0:r0 + n], mins[r0:r0 + n] = _k_scales_mins(blocks)
        qh = blocks[..., 16:48].reshape(n, nsuper, 1, 1, 32)                   # -, -, l
        nib = blocks[..., 48:].reshape(n, nsuper, 4, 1, 32)                    # chunk c: low nibbles, then high
        low = torch.cat((nib & 0x0F, nib >> 4), dim=3)                         # [n, nsuper, c, h, l]
        bit = torch.arange(8, dtype=torch.uint8).reshape(4, 2, 1)              # bit 2c + h of qh byte l
        q[r0:r0 + n] = _int8_layout((low | (((qh >> bit) & 1) << 4)).to(torch.int8).reshape(n, -1), grouped)
    return q, scales, mins


def repack_gguf_q8_0(raw: torch.Tensor, grouped: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GGUF Q8_0 bytes -> (q, scales fp16 [N, K/32]): q uint8 [N, K] in the grouped int8 order, or int8
    [N, K] plain. By default grouped where the native kernels have VNNI, whose products take the
    grouped codes as they are; plain elsewhere, where the grouped ones cost more at batch > 1
    (benchmarks/RESULTS.md)."""
    blocks = _blocks(raw, Q8_0_BYTES, "Q8_0")
    q = blocks[..., 2:].contiguous().view(torch.int8).reshape(blocks.shape[0], -1)
    return _int8_layout(q, grouped), _fp16(blocks, 0).contiguous()


def repack_gguf_q5_0(raw: torch.Tensor, grouped: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GGUF Q5_0 bytes -> (q, scales fp16 [N, K/32]) in the layout of repack_gguf_q8_0: the codes q - 16
    as int8 (exact, see the module docstring)."""
    blocks = _blocks(raw, Q5_0_BYTES, "Q5_0")
    bits = blocks[..., 2:6].contiguous().view(torch.int32)                          # qh [N, K/32, 1]
    high = (bits >> torch.arange(32, dtype=torch.int32)) & 1                       # bit 4 of weights 0..31
    nib = blocks[..., 6:]
    low = torch.cat((nib & 0x0F, nib >> 4), dim=-1).to(torch.int32)                 # weights 0..15, 16..31
    q = (low | (high << 4)) - 16
    return _int8_layout(q.to(torch.int8).reshape(blocks.shape[0], -1), grouped), _fp16(blocks, 0).contiguous()


def _grouped(grouped: bool | None) -> bool:
    """The int8 layout to repack into: grouped where asked, by default where the native kernels have VNNI."""
    if grouped is None:
        from . import backend
        from .build import builds_vnni

        grouped = backend() == "native" and builds_vnni()
    return grouped


def _int8_layout(q: torch.Tensor, grouped: bool | None) -> torch.Tensor:
    """int8 codes [N, K] in column order -> the kernels' grouped (uint8) or plain (int8) int8 layout."""
    return (pack_int8_groups(q) if _grouped(grouped) else q).contiguous()


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
