"""Quantized weight formats: quantize, pack, dequantize, and one matmul kernel function per format.

Every format stores its tensors with the output channel as the first dimension, so the rows of two
layers that share an input (q, k, v -> wqkv; gate, up -> w_in) concatenate along dim 0.

- int8:  qweight int8 [N, K], scales [N]; w = q * s (symmetric, per output channel).
- int4:  qweight uint8 [N, K/2] (column 2j in the low nibble, 2j+1 in the high one), scales and
         zeros [N, G] for G groups of ``group_size`` consecutive input columns; w = (q - z) * s with
         q, z in 0..15 (symmetric: z = 8 and q in 1..15).
- w8a8:  the int8 weight above, times an activation quantized to int8 per token (dynamic) or with
         one calibrated scale (static): y = (round(x / sx) * sx) @ w.T.
- fp8:   qweight float8_e4m3fn [N, K], scales [N]; w = q * s.

The ``*_matmul`` functions are the kernels: each computes ``x @ dequantize(...).T`` for activations
x [..., K]; a native kernel (issue 7) replaces one of them without touching the modules.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

INT8_MAX = 127
FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT4_KERNEL_GROUPS = (32, 64, 128, 256)  # group sizes torch's int4 kernels accept
CUDA_INNER_K_TILES = 8  # tinygemm's weight layout (gpt-fast's choice): K a multiple of 128


def _compiling() -> bool:
    """Whether torch.compile is tracing: Inductor 2.13's CPU lowerings of torch's packed int8 / int4
    products fail on a fused input ("LoweringException: AssertionError: Pointwise"), so compiled CPU
    steps take the dequantizing product, which Inductor fuses itself."""
    return torch.compiler.is_compiling()


# ------------------------------------------------------------------------------------------- int8

def int8_scales(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric scales [N] of w [N, K] (absmax / 127)."""
    return (w.abs().amax(dim=1).float() / INT8_MAX).clamp(min=1e-10)


def quantize_int8(w: torch.Tensor, scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (qweight int8 [N, K], scales fp32 [N])."""
    scales = int8_scales(w) if scales is None else scales
    q = torch.round(w.float() / scales[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return q.float() * scales.float()[:, None]


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ (q * s).T -> [..., N]; PyTorch's int8 weight kernel for bf16 activations on CPU
    (which reads out of bounds, or crashes, unless K is a multiple of 16)."""
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and q.shape[1] % 16 == 0 and not _compiling():
        y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), q, scales.to(x.dtype))
        return y.reshape(*x.shape[:-1], q.shape[0])
    if x.device.type != "cpu" and x.dtype != torch.float16:
        # the scale after the product: under torch.compile the codes' conversion fuses into the product
        # and the weight is read as int8 (gpt-fast's form). fp16 scales first: its sums could overflow.
        # (On the CPU, Inductor rewrites this form into the packed product that fails, see _compiling.)
        return F.linear(x, q.to(x.dtype)) * scales.to(x.dtype)
    return F.linear(x, dequantize_int8(q, scales).to(x.dtype))


# ------------------------------------------------------------------------------------------- int4

def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Values 0..15 [N, K] (K even) -> uint8 [N, K/2], column 2j low nibble, 2j+1 high nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> uint8 [N, K] values 0..15 (inverse of pack_int4)."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


def int4_params(w: torch.Tensor, group_size: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, zeros) [N, G] of w [N, K] for groups of group_size columns; zeros are integers 0..15."""
    g = w.float().reshape(w.shape[0], -1, group_size)  # [N, G, gs]
    if sym:
        scales = (g.abs().amax(-1) / 7).clamp(min=1e-10)
        return scales, torch.full_like(scales, 8)
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    scales = ((hi - lo) / 15).clamp(min=1e-10)
    return scales, torch.round(-lo / scales).clamp(0, 15)


def quantize_int4_values(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                         group_size: int) -> torch.Tensor:
    """Integer codes 0..15 [N, K] of w for the given per-group scales and zero points."""
    s = scales.repeat_interleave(group_size, dim=1)
    z = zeros.repeat_interleave(group_size, dim=1)
    return torch.round(w.float() / s + z).clamp(0, 15)


def quantize_int4(w: torch.Tensor, group_size: int, sym: bool):
    """w [N, K] -> (qweight uint8 [N, K/2], scales fp32 [N, G], zeros uint8 [N, G])."""
    scales, zeros = int4_params(w, group_size, sym)
    q = quantize_int4_values(w, scales, zeros, group_size)
    return pack_int4(q), scales, zeros.to(torch.uint8)


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    q = unpack_int4(packed).float()  # [N, K]
    group_size = q.shape[1] // scales.shape[1]
    s = scales.float().repeat_interleave(group_size, dim=1)
    z = zeros.float().repeat_interleave(group_size, dim=1)
    return (q - z) * s


def int4_kernel_pack(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor):
    """(weight, scales_and_zeros in bf16) for torch's bf16 int4 kernels, _weight_int4pack_mm_for_cpu on the
    CPU and _weight_int4pack_mm (tinygemm) on CUDA, on packed's device; None when the layer's shape or group
    size is one the kernel does not take. Both compute (q - 8) * s + m, so the zero point z becomes
    m = (8 - z) * s."""
    N, K = packed.shape[0], packed.shape[1] * 2
    group_size = K // scales.shape[1]
    m = (8 - zeros.float()) * scales.float()
    sz = torch.stack((scales.float().t(), m.t()), dim=-1).to(torch.bfloat16).contiguous()  # [G, N, 2]
    if packed.device.type == "cuda":
        if group_size not in INT4_KERNEL_GROUPS or K % (16 * CUDA_INNER_K_TILES) or N % 8:
            return None
        try:  # tinygemm's input: uint8 [N, K/2] with column 2j in the high nibble: ours, nibbles swapped
            weight = torch._convert_weight_to_int4pack((packed << 4) | (packed >> 4), CUDA_INNER_K_TILES)
        except (RuntimeError, TypeError):  # a GPU or build without the kernel: the dequantizing product
            return None
        return weight, sz
    if group_size not in INT4_KERNEL_GROUPS or K % 16 or N % 16:
        return None
    weight = torch._convert_weight_to_int4pack_for_cpu(unpack_int4(packed).to(torch.int32), 2)
    return weight, sz


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                kernel_weights=None) -> torch.Tensor:
    """x [..., K] @ dequantize_int4(...).T -> [..., N]; PyTorch's CPU int4 kernel for bf16 activations
    when ``kernel_weights`` (from int4_kernel_pack) is given."""
    if kernel_weights is not None and x.dtype == torch.bfloat16:
        weight, sz = kernel_weights
        group_size = packed.shape[1] * 2 // scales.shape[1]
        flat = x.reshape(-1, x.shape[-1])
        if x.device.type != "cpu":
            return torch._weight_int4pack_mm(flat, weight, group_size, sz).reshape(*x.shape[:-1], packed.shape[0])
        if not _compiling():
            y = torch._weight_int4pack_mm_for_cpu(flat, weight, group_size, sz)
            return y.reshape(*x.shape[:-1], packed.shape[0])
    return F.linear(x, dequantize_int4(packed, scales, zeros).to(x.dtype))


# ------------------------------------------------------------------------------------------- w8a8

def quantize_act_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (int8 codes [..., K], scales [..., 1]) with one symmetric scale per token."""
    scales = (x.abs().amax(dim=-1, keepdim=True).float() / INT8_MAX).clamp(min=1e-10)
    return torch.round(x.float() / scales).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scales


def quantize_act_static(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (int8 codes, the calibrated per-tensor scale broadcast as [..., 1])."""
    scale = scale.float().reshape(1).expand(*x.shape[:-1], 1)
    return torch.round(x.float() / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), scale


def fake_quantize_act(x: torch.Tensor, act_scale: torch.Tensor | None) -> torch.Tensor:
    """x after int8 quantization and back (fp32): the activation the W8A8 matmul really sees."""
    qx, sx = quantize_act_per_token(x) if act_scale is None else quantize_act_static(x, act_scale)
    return qx.float() * sx


def w8a8_matmul(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor,
                act_scale: torch.Tensor | None) -> torch.Tensor:
    """int8 activations x int8 weights with int32 accumulation (torch._int_mm), rescaled in fp32."""
    qx, sx = quantize_act_per_token(x) if act_scale is None else quantize_act_static(x, act_scale)
    flat = qx.reshape(-1, qx.shape[-1])
    acc = torch._int_mm(flat, q.t())  # [M, N] int32, exact
    y = acc.float() * sx.reshape(-1, 1) * scales.float()[None, :]
    return y.reshape(*x.shape[:-1], q.shape[0]).to(x.dtype)


# -------------------------------------------------------------------------------------------- fp8

def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (qweight float8_e4m3fn [N, K], scales fp32 [N]), absmax per output channel."""
    scales = (w.abs().amax(dim=1).float() / FP8_MAX).clamp(min=1e-12)
    return (w.float() / scales[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scales


def dequantize_fp8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return q.float() * scales.float()[:, None]


def fp8_matmul(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return F.linear(x, dequantize_fp8(q, scales).to(x.dtype))
