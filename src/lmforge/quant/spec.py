"""What to quantize and how: one validated QuantSpec, and the parser for ``--quantize`` strings."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..errors import LmforgeError

METHODS = ("rtn", "gptq", "awq", "smoothquant", "fp8")
GROUP_SIZES = (32, 64, 128, -1)
ACT_MODES = ("token", "static")


@dataclass(frozen=True)
class QuantSpec:
    method: str = "rtn"
    bits: int = 8
    group_size: int = -1           # int4 only; -1: one group per output channel (the whole input)
    scheme: str = "sym"            # "sym" | "asym" (asym: int4 only)
    alpha: float | str | None = None  # SmoothQuant migration strength, or "auto"
    act_quant: str = "token"       # SmoothQuant activations: per "token" (dynamic) or "static" scales
    act_order: bool = False        # GPTQ: quantize columns in order of decreasing Hessian diagonal
    damp: float = 0.01             # GPTQ: dampening, a fraction of the mean Hessian diagonal

    @property
    def format(self) -> str:
        """The runtime format of the quantized Linears (quant.linear.FORMATS)."""
        if self.method == "fp8":
            return "fp8"
        if self.method == "smoothquant":
            return "w8a8"
        return "int8" if self.bits == 8 else "int4"

    @property
    def needs_calibration(self) -> bool:
        return self.method in ("gptq", "awq", "smoothquant")

    def to_json(self) -> dict:
        return asdict(self)


def make_spec(method: str = "rtn", bits: int | None = None, group_size: int | None = None,
              scheme: str = "sym", alpha=None, act_quant: str = "token", act_order: bool = False,
              damp: float = 0.01) -> QuantSpec:
    """A QuantSpec with defaults filled in and impossible combinations refused.

    Defaults: bits 4 for GPTQ/AWQ, 8 otherwise; group size 128 for 4 bits, -1 (per channel) for 8."""
    if method not in METHODS:
        raise LmforgeError(f"unknown quantization method {method!r}; choose one of {', '.join(METHODS)}")
    if bits is None:
        bits = 4 if method in ("gptq", "awq") else 8
    if bits not in (4, 8):
        raise LmforgeError(f"--bits {bits} is not supported; choose 8 or 4")
    if method in ("smoothquant", "fp8") and bits != 8:
        raise LmforgeError(f"--method {method} stores 8-bit weights ({'W8A8 int8' if method == 'smoothquant' else 'float8 e4m3'}); "
                           f"--bits {bits} does not exist for it, use --bits 8")
    if group_size is None:
        group_size = 128 if bits == 4 else -1
    if group_size not in GROUP_SIZES:
        raise LmforgeError(f"--group-size {group_size} is not supported; choose one of 32, 64, 128 or -1 (per channel)")
    if bits == 8 and group_size != -1:
        raise LmforgeError(f"8-bit weights have one scale per output channel; --group-size {group_size} "
                           "applies to --bits 4 only, use --group-size -1")
    if scheme not in ("sym", "asym"):
        raise LmforgeError(f"unknown --scheme {scheme!r}; choose sym or asym")
    if scheme == "asym" and bits == 8:
        raise LmforgeError("8-bit weights are symmetric; --scheme asym applies to --bits 4 only")
    if alpha is not None and method != "smoothquant":
        raise LmforgeError(f"--alpha is the SmoothQuant migration strength; it does not apply to --method {method}")
    if method == "smoothquant":
        alpha = parse_alpha(0.5 if alpha is None else alpha)
    if act_quant not in ACT_MODES:
        raise LmforgeError(f"unknown activation quantization {act_quant!r}; choose token or static")
    if act_order and method != "gptq":
        raise LmforgeError("--act-order applies to --method gptq only")
    if not 0 < damp < 1:
        raise LmforgeError(f"--damp must be between 0 and 1 (a fraction of the mean Hessian diagonal), got {damp}")
    return QuantSpec(method, bits, group_size, scheme, alpha, act_quant, act_order, damp)


def parse_alpha(alpha) -> float | str:
    if alpha == "auto":
        return "auto"
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise LmforgeError(f"--alpha must be a number between 0 and 1 or 'auto', got {alpha!r}") from None
    if not 0 <= value <= 1:
        raise LmforgeError(f"--alpha must be between 0 and 1 (or 'auto'), got {value}")
    return value


_SPEC = re.compile(r"(int8|fp8|int4)(?:-g(32|64|128|-1|pc))?(?:-(sym|asym))?")


def parse_quantize(text: str) -> QuantSpec:
    """On-the-fly (RTN) spec: ``int8``, ``fp8``, ``int4`` (group 128, sym), ``int4-g64``,
    ``int4-g128-asym``, ``int4-gpc`` (per channel)."""
    m = _SPEC.fullmatch(text.strip().lower())
    if m is None:
        raise LmforgeError(f"unknown --quantize {text!r}; use int8, fp8, int4, or int4-g<32|64|128|pc>[-sym|-asym] "
                           "(e.g. int4-g128-asym)")
    kind, group, scheme = m.groups()
    if kind != "int4" and (group or scheme):
        raise LmforgeError(f"--quantize {text!r}: group sizes and schemes apply to int4 only; use {kind}")
    if kind == "fp8":
        return make_spec("fp8")
    if kind == "int8":
        return make_spec("rtn", bits=8)
    gs = 128 if group is None else (-1 if group in ("pc", "-1") else int(group))
    return make_spec("rtn", bits=4, group_size=gs, scheme=scheme or "sym")
