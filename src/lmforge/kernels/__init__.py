"""Native CPU kernels for quantized linear layers, registered as ``torch.ops.lmforge.*`` custom ops.

Weight layouts (output channel first; K a multiple of 32, groups of K/G columns, K/G a multiple of 32):

- int4: ``qs`` uint8 [N, K/2] in 32-column blocks of 16 bytes, byte j of a block holding column j in its
  low nibble and column j + 16 in its high one (GGUF's order); ``scales`` and ``mins`` [N, G], both
  float16 or both float32; w = q * scale + min with q in 0..15.
- int8: ``q`` int8 [N, K]; ``scales`` float16 or float32 [N, G]; w = q * scale.

``int4_linear(x, ...)`` / ``int8_linear(x, ...)`` compute x [..., K] @ W.T -> [..., N] (in x's dtype)
with x quantized to int8 per 32-column block, as llama.cpp does; ``reference`` defines the exact math.
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

__all__ = ["backend", "int4_linear", "int8_linear", "repack_gguf_q4_0", "repack_gguf_q4_1",
           "repack_gguf_q8_0", "repack_int4", "repack_int8"]

SCHEMAS = {
    "int4_linear": "int4_linear(Tensor x, Tensor qs, Tensor scales, Tensor mins) -> Tensor",
    "int8_linear": "int8_linear(Tensor x, Tensor q, Tensor scales) -> Tensor",
}
REFERENCE = {"int4_linear": reference.int4_linear, "int8_linear": reference.int8_linear}

_backend: str | None = None  # "native" or "reference", once the ops are registered
_libs: list[torch.library.Library] = []  # registrations live as long as their Library object


def _fake_linear(x: torch.Tensor, weight: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


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
        torch.library.register_fake(f"lmforge::{name}", _fake_linear, lib=lib)
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
