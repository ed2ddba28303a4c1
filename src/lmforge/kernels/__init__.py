"""Native CPU kernels for quantized linear layers, registered as ``torch.ops.lmforge.*`` custom ops.

Weight layouts (output channel first; K a multiple of 32, groups of K/G columns, K/G a multiple of 32):

- int4: ``qs`` uint8 [N, K/2]: each row is groups of 8 blocks of 32 columns (128 bytes), then the
  blocks left over (16 bytes each, GGUF's order: byte i holds column i in its low nibble and i + 16
  in its high one). In a group the blocks are interleaved 4 bytes at a time, so that each 32-bit lane
  of the kernels' vectors holds one block and 8 blocks share one conversion and one multiply:
  byte 32 t + 4 j + e holds columns 8 t + e and 8 t + 4 + e of block j (``reference.pack_int4_blocks``).
  ``scales`` and ``mins`` [N, G], both float16 or both float32; w = q * scale + min with q in 0..15.
  Empty ``mins`` [N, 0] mean min = -8 * scale (symmetric codes, GGUF Q4_0): 11% fewer bytes to read
  than storing them. Blocks of 32 may also take K-quant scales and mins (GGUF Q4_K at load), both uint8
  [N, G/8 * 10]: per 8 blocks 8 uint8 multipliers and an fp16 step, block i's value d * q[i]
  (``reference.pack_k_scales``), 2.5 bytes per block for both where fp32 takes 8.
- int8: ``q`` int8 [N, K] (plain: column order), or uint8 [N, K] (grouped, GGUF Q8_0 at load: the codes
  + 128, in interleaved groups of 8 blocks like int4's, byte 32 i + 4 j + e holding column 4 i + e
  of block j, then the blocks left over in column order; ``reference.pack_int8_groups``). ``scales``
  float16 or float32 [N, G]; w = q * scale. int8 also takes K-quant scales (uint8, as int4's) of blocks
  of 32 with K-quant ``mins`` (w = q * scale + min; GGUF Q5_K at load, codes 0..31), and half-block
  ones, one per 16 columns (GGUF Q6_K at load).
- dense: ``weight`` float32, bfloat16 or float16 [N, K] (an ordinary Linear weight).

``int4_linear(x, ..., act_bits)`` / ``int8_linear(x, ..., act_bits)`` compute x [..., K] @ W.T -> [..., N]
(in x's dtype). With act_bits = 32 the weight is dequantized in registers and multiplied with x in
fp32: the result is that of the dequantized weight. With 16 or 8 the rows of x (a decode step, a
prompt) are first rounded per 32 values to two int8 planes (~15 bits) or one (llama.cpp's rounding),
and the products are integer (``reference.round_activations`` defines the rounding; only the fp32
summation order differs from ``reference``); from 16 rows of x on Intel's AMX tiles where the CPU has
them (``amx_products``).
``attention_decode`` ropes q and k, writes k and v into a layer's static cache (fp32 or fp16,
``KV_CACHE_DTYPES``) and attends, for a decode step's few tokens; ``silu_mul`` is a gated MLP's
silu(gate) * up.
``dense_linear(x, weight)`` is F.linear for the few activation rows of a decode step, reading the
weight once at the machine's bandwidth (fp32 accumulation; half-precision weights widened in registers);
where the build has its prompt kernel (``dense_prompt_kernel``) also for a prompt's rows.
``rms_norm(x, weight, eps)`` is Llama's RMSNorm in fp32 in one call.
``int4_rows(ids, ...)`` / ``int8_rows(ids, ...)`` dequantize the rows ids of a table: a quantized
embedding's lookup.
``torch.classes.lmforge.DecodePlan`` (native library only) runs a model's whole one-token decode step
with these kernels in one call; ``lmforge.models.native_step`` builds it.
``repack_*`` convert GGUF blocks and lmforge's formats into these layouts.

The C++ kernels are built on first use (cached, see ``build``). Where they cannot be built, the same
ops are registered with the pure-PyTorch reference and one line on stderr says so; set
``LMFORGE_NO_NATIVE=1`` to force that.
"""
from __future__ import annotations

import sys

import torch

from . import reference
from .build import load_native
from .repack import (repack_gguf_q4_0, repack_gguf_q4_1, repack_gguf_q4_k, repack_gguf_q5_0, repack_gguf_q5_k,
                     repack_gguf_q6_k, repack_gguf_q8_0, repack_int4, repack_int8)

__all__ = ["attention_decode", "backend", "dense_linear", "describe", "int4_linear", "int4_rows", "int8_linear",
           "int8_rows", "repack_gguf_q4_0", "repack_gguf_q4_1", "repack_gguf_q4_k", "repack_gguf_q5_0",
           "repack_gguf_q5_k", "repack_gguf_q6_k", "repack_gguf_q8_0", "repack_int4", "repack_int8", "rms_norm", "silu_mul"]

SCHEMAS = {
    "int4_linear": "int4_linear(Tensor x, Tensor qs, Tensor scales, Tensor mins, int act_bits=32) -> Tensor",
    "int8_linear": "int8_linear(Tensor x, Tensor q, Tensor scales, int act_bits=32, Tensor? mins=None) -> Tensor",
    "int4_rows": "int4_rows(Tensor ids, Tensor qs, Tensor scales, Tensor mins) -> Tensor",
    "int8_rows": "int8_rows(Tensor ids, Tensor q, Tensor scales, Tensor? mins=None) -> Tensor",
    "dense_linear": "dense_linear(Tensor x, Tensor weight) -> Tensor",
    "rms_norm": "rms_norm(Tensor x, Tensor weight, float eps) -> Tensor",
    "silu_mul": "silu_mul(Tensor h) -> Tensor",
    "attention_decode": "attention_decode(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k_cache, "
                        "Tensor(b!) v_cache, Tensor slots, Tensor mask, int n_heads, int n_kv_heads, float scale, "
                        "bool interleaved) -> Tensor",
}
REFERENCE = {"int4_linear": reference.int4_linear, "int8_linear": reference.int8_linear,
             "int4_rows": reference.int4_rows, "int8_rows": reference.int8_rows,
             "dense_linear": reference.dense_linear, "rms_norm": reference.rms_norm,
             "attention_decode": reference.attention_decode, "silu_mul": reference.silu_mul}
DENSE_MAX_ROWS = 4  # dense_linear pays for decode-sized inputs; larger ones are ATen GEMM's job,
# except where the native build has its prompt kernel (dense_prompt_kernel)

_backend: str | None = None  # "native" or "reference", once the ops are registered
_prompt_kernel: bool | None = None  # dense_prompt_kernel(), once asked
_amx: bool | None = None  # amx_products(), once asked
DENSE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # the weights dense_linear takes
_libs: list[torch.library.Library] = []  # registrations live as long as their Library object


def _fake_linear(x: torch.Tensor, weight: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _fake_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x)


def _fake_attention(qkv: torch.Tensor, cos, sin, k_cache, v_cache, slots, mask, n_heads: int, *_) -> torch.Tensor:
    return qkv.new_empty((qkv.shape[0], qkv.shape[1], n_heads * qkv.shape[3]))


def _fake_silu_mul(h: torch.Tensor) -> torch.Tensor:
    return h.new_empty((*h.shape[:-1], h.shape[-1] // 2))


def _fake_int4_rows(ids: torch.Tensor, qs: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
    return qs.new_empty((*ids.shape, qs.shape[1] * 2), dtype=torch.float32)


def _fake_int8_rows(ids: torch.Tensor, q: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
    return q.new_empty((*ids.shape, q.shape[1]), dtype=torch.float32)


FAKES = {"int4_rows": _fake_int4_rows, "int8_rows": _fake_int8_rows, "rms_norm": _fake_norm, "attention_decode": _fake_attention, "silu_mul": _fake_silu_mul}


def _register() -> str:
    reason = load_native()  # on success the C++ library has defined the ops with CPU kernels
    lib = torch.library.Library("lmforge", "FRAGMENT")
    _libs.append(lib)
    if reason is not None:
        print(f"lmforge: native CPU kernels unavailable ({reason}); using the slower PyTorch reference",
              file=sys.stderr)
        for name, schema in SCHEMAS.items():
            lib.define(schema)
            lib.impl(name, REFERENCE[name], "CompositeExplicitAutograd")
    else:
        for name in SCHEMAS:  # other devices (CUDA) run the reference
            lib.impl(name, REFERENCE[name], "CUDA")
    for name in SCHEMAS:
        torch.library.register_fake(f"lmforge::{name}", FAKES.get(name, _fake_linear), lib=lib)
    return "native" if reason is None else "reference"


def backend() -> str:
    """"native" or "reference": which implementation the ops run (registers them on first call)."""
    global _backend
    if _backend is None:
        _backend = _register()
    return _backend


def describe() -> str:
    """Which kernels run the ops, for reports: the native build (its -march and dot products) or the
    PyTorch reference."""
    if backend() == "native":
        from .build import describe_build

        return f"native ({describe_build()}{', AMX tiles for prompts' if amx_products() else ''})"
    return "PyTorch reference (no native build)"


def int4_linear(x: torch.Tensor, qs: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                act_bits: int = 32) -> torch.Tensor:
    """x [..., K] @ W.T -> [..., N] for the int4 layout (W = q * scales + mins per group); act_bits 16 or
    8 round decode-sized x per 32 values first (``reference.round_activations``)."""
    backend()
    return torch.ops.lmforge.int4_linear(x, qs, scales, mins, act_bits)


def int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, act_bits: int = 32,
                mins: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ W.T -> [..., N] for an int8 layout (W = q * scales per group, + mins with K-quant
    ones; q int8 plain or uint8 grouped); act_bits as for int4."""
    backend()
    return torch.ops.lmforge.int8_linear(x, q, scales, act_bits, mins)


def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ weight.T -> [..., N] (in x's dtype) for a dense weight; meant for decode steps."""
    backend()
    return torch.ops.lmforge.dense_linear(x, weight)


DECODE_ATTENTION_MAX_TOKENS = 8  # attention_decode pays for a few new tokens; prefill is SDPA's job
KV_CACHE_DTYPES = (torch.float32, torch.float16)  # the caches attention_decode and DecodePlan read


def attention_decode(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor, n_heads: int,
                     n_kv_heads: int, scale: float, interleaved: bool) -> torch.Tensor:
    """One decode step's attention for a layer: rope q and k (cos/sin [B, S, 1, rd], or empty tensors
    for none), write k and v into the layer's caches [B, KV, Lmax, hd] at ``slots``, and attend over
    the first L slots under ``mask`` [B, 1, S, L]; qkv [B, S, H + 2 KV, hd] -> [B, S, H * hd] (fp32)."""
    backend()
    return torch.ops.lmforge.attention_decode(qkv, cos, sin, k_cache, v_cache, slots, mask, n_heads, n_kv_heads,
                                              scale, interleaved)


def dense_prompt_kernel() -> bool:
    """Whether dense_linear runs a prompt's fp32 rows (more than DENSE_MAX_ROWS) with its own kernel
    rather than ATen's GEMM, whose MKL sgemm takes a slow path on AMD CPUs: in the native build for AMD
    CPUs (build.prompt256; 512-bit on Zen 5, 1.2-4.7x ATen's speed at 5 to 2,048 rows; 256-bit
    elsewhere up to 384 rows, past which dense_linear hands them to ATen: 0.97-4.7x at 8 to 384 rows on
    Zen 2; benchmarks/RESULTS.md)."""
    global _prompt_kernel
    if _prompt_kernel is None:
        _prompt_kernel = backend() == "native" and bool(torch.ops.lmforge.dense_prompt_kernel())
    return _prompt_kernel


def amx_products() -> bool:
    """Whether prompts' integer products (act_bits 16 / 8, from 16 rows of x) run on Intel's AMX tiles:
    a native build for a CPU with AMX-INT8 (Sapphire Rapids on) whose process Linux granted the tile state,
    unless LMFORGE_KERNEL_AMX=0 (benchmarks/RESULTS.md: prefill of the default model 1.5-1.7x as fast)."""
    global _amx
    if _amx is None:
        _amx = backend() == "native" and bool(torch.ops.lmforge.amx_products())
    return _amx


def silu_mul(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for h = [gate | up] (a gated MLP's fused projection), fp32: [..., 2n] -> [..., n]."""
    backend()
    return torch.ops.lmforge.silu_mul(h)


def int4_rows(ids: torch.Tensor, qs: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """Rows ids [...] of an int4 table (the layout above) in fp32 [..., K]: an embedding lookup that
    dequantizes only the rows it reads, bit-identical to ``reference.dequantize_int4_blocks``."""
    backend()
    return torch.ops.lmforge.int4_rows(ids, qs, scales, mins)


def int8_rows(ids: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Rows ids [...] of an int8 table (plain or grouped) in fp32 [..., K], as int4_rows."""
    backend()
    return torch.ops.lmforge.int8_rows(ids, q, scales, mins)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dimension (float32 tensors)."""
    backend()
    return torch.ops.lmforge.rms_norm(x, weight, eps)
