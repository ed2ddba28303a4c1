"""Round-to-nearest: each weight to its nearest grid point; the building block of the other methods."""
from __future__ import annotations

import torch

from .linear import FP8Linear, Int4Linear, Int8Linear, QuantLinear
from .spec import QuantSpec


def rtn_linear(weight: torch.Tensor, bias: torch.Tensor | None, spec: QuantSpec) -> QuantLinear:
    """A weight-only QuantLinear for weight [N, K] in the spec's format (int8, int4 or fp8)."""
    if spec.format == "fp8":
        return FP8Linear.from_float(weight, bias)
    if spec.format == "int8":
        return Int8Linear.from_float(weight, bias)
    return Int4Linear.from_float(weight, bias, group_size=spec.group_size, sym=spec.scheme == "sym")


def fake_quantize(weight: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """weight [N, K] after RTN quantization and back, fp32 (for scale searches)."""
    return rtn_linear(weight, None, spec).dequantize()
