"""Native CPU kernels for quantized linear layers, registered as ``torch.ops.lmforge.*`` custom ops.

Weight layouts (output channel first; K a multiple of 32, groups of K/G columns, K/G a multiple of 32):

- int4: ``qs`` uint8 [N, K/2] in 32-column blocks of 16 bytes, byte j of a block holding column j in its
  low nibble and column j + 16 in its high one (GGUF's order); ``scales`` and ``mins`` [N, G], both
  float16 or both float32; w = q * scale + min with q in 0..15.
- int8: ``q`` int8 [N, K]; ``scales`` float16 or float32 [N, G]; w = q * scale.
- dense: ``weight`` float32, bfloat16 or float16 [N, K] (an ordinary Linear weight).

``int4_linear(x, ...)`` / ``int8_linear(x, ...)`` compute x [..., K] @ W.T -> [..., N] (in x's dtype):
the weight is dequantized in registers and multiplied with x in fp32, so the result is that of the
dequantized weight (``reference`` defines it; only the summation order differs).
``dense_linear(x, weight)`` is F.linear for the few activation rows of a decode step, reading the
weight once at the machine's bandwidth (fp32 accumulation; half-precision weights widened in registers).
``rms_norm(x, weight, eps)`` is Llama's RMSNorm in fp32 in one call.
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
from .repack import (repack_gguf_q4_0, repack_gguf_q4_1, repack_gguf_q8_0, repack_int4,
                     repack_int8)

__all__ = ["backend", "dense_linear", "int4_linear", "int8_linear", "rms_norm", "repack_gguf_q4_0",
           "repack_gguf_q4_1", "repack_gguf_q8_0", "repack_int4", "repack_int8"]

SCHEMAS = {
    "int4_linear": "int4_linear(Tensor x, Tensor qs, Tensor scales, Tensor mins) -> Tensor",
    "int8_linear": "int8_linear(Tensor x, Tensor q, Tensor scales) -> Tensor",
    "dense_linear": "dense_linear(Tensor x, Tensor weight) -> Tensor",
    "rms_norm": "rms_norm(Tensor x, Tensor weight, float eps) -> Tensor",
}
REFERENCE = {"int4_linear": reference.int4_linear, "int8_linear": reference.int8_linear,
             "dense_linear": reference.dense_linear, "rms_norm": reference.rms_norm}
DENSE_MAX_ROWS = 4  # dense_linear pays for decode-sized inputs; larger ones are ATen GEMM's job

_backend: str | None = None  # "native" or "reference", once the ops are registered
_libs: list[torch.library.Library] = []  # registrations live as long as their Library object


def _fake_linear(x: torch.Tensor, weight: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _fake_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x)


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
        fake = _fake_norm if name == "rms_norm" else _fake_linear
        torch.library.register_fake(f"lmforge::{name}", fake, lib=lib)
    return "native" if reason is None else "reference"


def backend() -> str:
    """"native" or "reference": which implementation the ops run (registers them on first call)."""
    global _backend
    if _backend is None:
        _backend = _register()
    return _backend


def int4_linear(x: torch.Tensor, qs: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ W.T -> [..., N] for the int4 layout (W = q * scales + mins per group)."""
    backend()
    return torch.ops.lmforge.int4_linear(x, qs, scales, mins)


def int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ W.T -> [..., N] for the int8 layout (W = q * scales per group)."""
    backend()
    return torch.ops.lmforge.int8_linear(x, q, scales)


def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ weight.T -> [..., N] (in x's dtype) for a dense weight; meant for decode steps."""
    backend()
    return torch.ops.lmforge.dense_linear(x, weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dimension (float32 tensors)."""
    backend()
    return torch.ops.lmforge.rms_norm(x, weight, eps)
