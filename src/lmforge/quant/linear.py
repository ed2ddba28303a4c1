"""QuantLinear modules: drop-in replacements for nn.Linear holding quantized weights.

Each module stores its format's tensors (see ``formats``) as buffers plus, when present:

- ``bias`` [N] in the model dtype;
- ``input_scale`` [K]: a per-input-channel multiplier applied to x first (an AWQ / SmoothQuant
  smoothing factor that could not be folded into the preceding op);
- ``perm`` [K] int64: x is read in this column order (GPTQ act-order with groups: the stored
  columns are sorted so that every group is contiguous).

``dequantize()`` returns the weight [N, K] in fp32 acting on the prepared input; ``reference(x)``
is the plain dequantize-then-matmul definition; ``forward`` calls the format's kernel, which equals
the reference up to the rounding of the activation dtype and the summation order: on the CPU, int8 and
int4 run lmforge's native kernels (for int4, the weights are repacked once into the kernels' layout). ``cat`` joins modules along output rows
(q, k, v -> wqkv).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..errors import LmforgeError
from . import formats


def native_kernels(x: torch.Tensor) -> bool:
    """Whether x goes to lmforge's native CPU kernels."""
    return x.device.type == "cpu" and kernels.backend() == "native"


ACT_BITS = (32, 16, 8)
DEFAULT_ACT_BITS = 16  # near-exact (see lmforge.kernels) and ~1.3x faster than fp32 activations


class QuantLinear(nn.Module):
    format: str = ""
    weight_names: tuple[str, ...] = ()
    # How the native CPU kernels take decode-sized activations (int8/int4/q4/q8 formats): 32 = fp32,
    # 16 / 8 = rounded per 32 values to two int8 planes / one (see lmforge.kernels); set_activation_bits.
    act_bits: int = DEFAULT_ACT_BITS

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 input_scale: bool = False, perm: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_scale", torch.ones(in_features) if input_scale else None)
        self.register_buffer("perm", torch.arange(in_features) if perm else None)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, format={self.format}, bias={self.bias is not None}"

    # ---------------------------------------------------------------------------------- compute
    # The hot path reads buffers from self._buffers: nn.Module.__getattr__ costs about a microsecond a
    # lookup, and a small model's decode step makes tens of thousands of them.
    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., K]
        buffers = self._buffers
        if buffers["input_scale"] is not None:
            x = x * buffers["input_scale"].to(x.dtype)
        if buffers["perm"] is not None:
            x = x[..., buffers["perm"]]
        return x

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The definition: dequantized weight times the prepared input."""
        return F.linear(self.prepare_input(x), self.dequantize().to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matmul(self.prepare_input(x))
        bias = self._buffers["bias"]
        return y if bias is None else y + bias.to(y.dtype)

    # ----------------------------------------------------------------------------- construction
    def _set(self, weights: dict[str, torch.Tensor], bias: torch.Tensor | None):
        for name in self.weight_names:
            setattr(self, name, weights[name])
        if bias is not None:
            self.bias = bias.detach().clone()
        return self

    @classmethod
    def cat(cls, parts: list["QuantLinear"]) -> "QuantLinear":
        """One module whose output rows are those of `parts` in order (all of one format, one input)."""
        first = parts[0]
        if any(type(p) is not cls or p.in_features != first.in_features for p in parts):
            raise ValueError("only modules of one format with the same input size can be fused")
        for name in ("input_scale", "perm"):
            values = [getattr(p, name) for p in parts]
            if any((v is None) != (values[0] is None) or (v is not None and not torch.equal(v, values[0]))
                   for v in values):
                raise ValueError(f"the parts differ in {name}; they cannot share one input")
        out = cls.empty_like(first, sum(p.out_features for p in parts), bias=first.bias is not None)
        for name in cls.weight_names:
            setattr(out, name, torch.cat([getattr(p, name) for p in parts], dim=0))
        if first.bias is not None:
            out.bias = torch.cat([p.bias for p in parts])
        out.input_scale, out.perm = first.input_scale, first.perm
        return out

    @classmethod
    def empty_like(cls, other: "QuantLinear", out_features: int, bias: bool) -> "QuantLinear":
        return cls(other.in_features, out_features, bias=bias, input_scale=other.input_scale is not None,
                   perm=other.perm is not None, **other.format_args())

    def format_args(self) -> dict:
        return {}


class Int8Linear(QuantLinear):
    format = "int8"
    weight_names = ("qweight", "scales")

    def __init__(self, in_features, out_features, bias=False, input_scale=False, perm=False):
        super().__init__(in_features, out_features, bias, input_scale, perm)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features))

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "Int8Linear":
        q, s = formats.quantize_int8(weight)
        return cls(weight.shape[1], weight.shape[0], bias is not None)._set({"qweight": q, "scales": s}, bias)

    def dequantize(self):
        return formats.dequantize_int8(self.qweight, self.scales)

    def matmul(self, x):
        if native_kernels(x) and self.in_features % kernels.reference.QK == 0:
            return kernels.int8_linear(x, self.qweight, self.scales[:, None], self.act_bits)
        return formats.int8_matmul(x, self.qweight, self.scales)


class Int4Linear(QuantLinear):
    format = "int4"
    weight_names = ("qweight", "scales", "zeros")

    def __init__(self, in_features, out_features, bias=False, input_scale=False, perm=False, group_size=128):
        super().__init__(in_features, out_features, bias, input_scale, perm)
        self.group_size = in_features if group_size == -1 else group_size
        groups = in_features // self.group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups))
        self.register_buffer("zeros", torch.full((out_features, groups), 8, dtype=torch.uint8))
        self._kernel = None  # (weight, scales_and_zeros) for torch's bf16 CPU kernel, packed on first use
        self._blocks = None  # (qs, scales, mins) for lmforge's native kernel, packed on first use

    def format_args(self):
        return {"group_size": self.group_size}

    def extra_repr(self):
        return super().extra_repr() + f", group_size={self.group_size}"

    @classmethod
    def from_float(cls, weight, bias=None, group_size=128, sym=True) -> "Int4Linear":
        gs = weight.shape[1] if group_size == -1 else group_size
        q, s, z = formats.quantize_int4(weight, gs, sym)
        return cls(weight.shape[1], weight.shape[0], bias is not None, group_size=gs)._set(
            {"qweight": q, "scales": s, "zeros": z}, bias)

    def dequantize(self):
        return formats.dequantize_int4(self.qweight, self.scales, self.zeros)

    def matmul(self, x):
        if native_kernels(x) and self.group_size % kernels.reference.QK == 0:
            if self._blocks is None:  # the kernels' block layout, made once
                self._blocks = kernels.repack_int4(self.qweight, self.scales, self.zeros)
            return kernels.int4_linear(x, *self._blocks, self.act_bits)
        if x.dtype == torch.bfloat16 and self._kernel is None:  # a prompt packs it before compiled steps
            self._kernel = formats.int4_kernel_pack(self.qweight, self.scales, self.zeros) or ()
            if x.device.type == "cuda":  # CUDA graphs read them in place, as they do buffers
                for t in self._kernel:
                    torch._dynamo.mark_static_address(t)
        return formats.int4_matmul(x, self.qweight, self.scales, self.zeros, self._kernel or None)

    def _apply(self, fn, recurse=True):  # .to()/.cuda() invalidate the kernels' packed copies
        self._kernel = self._blocks = None
        return super()._apply(fn, recurse)


class W8A8Linear(QuantLinear):
    """int8 weights per output channel x int8 activations (per token, or one static scale)."""
    format = "w8a8"
    weight_names = ("qweight", "scales")

    def __init__(self, in_features, out_features, bias=False, input_scale=False, perm=False, static=False):
        super().__init__(in_features, out_features, bias, input_scale, perm)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features))
        self.register_buffer("act_scale", torch.ones(()) if static else None)

    def format_args(self):
        return {"static": self.act_scale is not None}

    @classmethod
    def from_float(cls, weight, bias=None, act_scale: torch.Tensor | None = None) -> "W8A8Linear":
        q, s = formats.quantize_int8(weight)
        m = cls(weight.shape[1], weight.shape[0], bias is not None, static=act_scale is not None)
        if act_scale is not None:
            m.act_scale = act_scale.float().reshape(())
        return m._set({"qweight": q, "scales": s}, bias)

    def dequantize(self):
        return formats.dequantize_int8(self.qweight, self.scales)

    def reference(self, x):
        xq = formats.fake_quantize_act(self.prepare_input(x), self.act_scale)
        y = F.linear(xq, self.dequantize())
        return (y if self.bias is None else y + self.bias.float()).to(x.dtype)

    def matmul(self, x):
        return formats.w8a8_matmul(x, self.qweight, self.scales, self.act_scale)


class FP8Linear(QuantLinear):
    format = "fp8"
    weight_names = ("qweight", "scales")

    def __init__(self, in_features, out_features, bias=False, input_scale=False, perm=False):
        super().__init__(in_features, out_features, bias, input_scale, perm)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.float8_e4m3fn))
        self.register_buffer("scales", torch.ones(out_features))

    @classmethod
    def from_float(cls, weight, bias=None) -> "FP8Linear":
        q, s = formats.quantize_fp8(weight)
        return cls(weight.shape[1], weight.shape[0], bias is not None)._set({"qweight": q, "scales": s}, bias)

    def dequantize(self):
        return formats.dequantize_fp8(self.qweight, self.scales)

    def matmul(self, x):
        return formats.fp8_matmul(x, self.qweight, self.scales)


class BlockInt4Linear(QuantLinear):
    """int4 in blocks of 32 input columns, the layout of lmforge's native kernels (GGUF Q4_0 / Q4_1 / Q4_K
    repacked at load): ``qs`` uint8 [N, K/2], ``scales`` and ``mins`` [N, G] float16 or float32,
    w = q * scale + min per group of K/G columns; symmetric (Q4_0) modules keep ``mins`` empty [N, 0],
    meaning min = -8 * scale. ``scale_dtype`` uint8: K-quant scales and mins (Q4_K), uint8 [N, G/8 * 10]
    for blocks of 32 (see lmforge.kernels)."""
    format = "q4"
    weight_names = ("qs", "scales", "mins")

    def __init__(self, in_features, out_features, bias=False, input_scale=False, perm=False,
                 groups: int | None = None, scale_dtype: torch.dtype = torch.float16, symmetric: bool = False):
        super().__init__(in_features, out_features, bias, input_scale, perm)
        groups = groups or in_features // kernels.reference.QK
        width = groups // 8 * kernels.reference.KSCALE_BYTES if scale_dtype == torch.uint8 else groups
        self.register_buffer("qs", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, width, dtype=scale_dtype))
        self.register_buffer("mins", torch.zeros(out_features, 0 if symmetric else width, dtype=scale_dtype))

    def format_args(self):
        return {"groups": kernels.reference.scale_groups(self.scales), "scale_dtype": self.scales.dtype,
                "symmetric": self.mins.shape[1] == 0}

    def dequantize(self):
        return kernels.reference.dequantize_int4_blocks(self.qs, self.scales, self.mins)

    def matmul(self, x):
        b = self._buffers
        return kernels.int4_linear(x, b["qs"], b["scales"], b["mins"], self.act_bits)


class BlockInt8Linear(QuantLinear):
    """int8 with one scale per group of input columns (GGUF Q8_0 / Q5_0 at load: groups of 32), the native
    kernels' layout: ``q`` uint8 [N, K] grouped (codes + 128, interleaved per 8 blocks, see
    lmforge.kernels; where the kernels have VNNI) or int8 [N, K] plain, ``scales`` [N, G] float16 or
    float32, w = q * scale. It also takes K-quant scales (``scale_dtype`` uint8, [N, G/8 * 10]): ones of
    blocks of 32 with K-quant ``mins`` (``with_mins``: w = q * scale + min, GGUF Q5_K at load), and
    half-block ones with ``group_size=16`` (GGUF Q6_K at load). ``mins`` is empty [N, 0] otherwise."""
    format = "q8"
    weight_names = ("q", "scales", "mins")

    def __init__(self, in_features, out_features, bias=False, input_scale=False, perm=False,
                 groups: int | None = None, scale_dtype: torch.dtype = torch.float16, group_size: int | None = None,
                 with_mins: bool = False):
        super().__init__(in_features, out_features, bias, input_scale, perm)
        groups = groups or in_features // (group_size or kernels.reference.QK)
        width = groups // 8 * kernels.reference.KSCALE_BYTES if scale_dtype == torch.uint8 else groups
        self.register_buffer("q", torch.full((out_features, in_features), 128, dtype=torch.uint8))  # zeros
        self.register_buffer("scales", torch.ones(out_features, width, dtype=scale_dtype))
        self.register_buffer("mins", torch.zeros(out_features, width if with_mins else 0, dtype=scale_dtype))

    def format_args(self):
        return {"groups": kernels.reference.scale_groups(self.scales), "scale_dtype": self.scales.dtype,
                "with_mins": self.mins.shape[1] > 0}

    def dequantize(self):
        return kernels.reference.dequantize_int8_blocks(self.q, self.scales, self.mins)

    def matmul(self, x):
        b = self._buffers
        return kernels.int8_linear(x, b["q"], b["scales"], self.act_bits, b["mins"])  # mins may be empty


BLOCK_FORMATS = (BlockInt4Linear, BlockInt8Linear)


class PartsLinear(nn.Module):
    """A fused Linear (q/k/v, gate/up) whose row ranges are in different block formats, e.g. a GGUF
    Q4_K_M attention's Q4_K q and k beside its Q6_K v: ``parts`` (block-format QuantLinears over the same
    inputs, without biases) in row order; the output is theirs side by side, plus ``bias`` [N]."""

    def __init__(self, parts: list[QuantLinear], bias: bool = False):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.in_features = parts[0].in_features
        self.out_features = sum(p.out_features for p in parts)
        self.register_buffer("bias", torch.zeros(self.out_features) if bias else None)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"

    def dequantize(self) -> torch.Tensor:
        return torch.cat([p.dequantize() for p in self.parts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([p(x) for p in self.parts], dim=-1)
        bias = self._buffers["bias"]
        return y if bias is None else y + bias.to(y.dtype)


class BlockEmbedding(nn.Module):
    """A token embedding kept in a block format (``table``: a BlockInt8Linear or BlockInt4Linear over
    [vocab, dim]): a lookup dequantizes only the rows it gathers. It also serves as a tied output
    head (TiedHead), so the table is stored once, quantized."""

    def __init__(self, table: QuantLinear, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.table, self.dtype = table, dtype

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: [B, S] -> [B, S, D] fp32
        t = self.table
        if isinstance(t, BlockInt8Linear):
            rows = kernels.int8_rows(tokens, t.q, t.scales, t.mins)
        else:
            rows = kernels.int4_rows(tokens, t.qs, t.scales, t.mins)
        return rows.to(self.dtype)


class TiedHead(nn.Module):
    """The output head of a model whose head is its (block-quantized) embedding table. It holds no
    tensors of its own: the table belongs to the embedding and is read through it."""

    def __init__(self, embedding: BlockEmbedding):
        super().__init__()
        self._embedding = [embedding]  # a list: not a submodule, so the table is saved and moved once

    @property
    def table(self) -> QuantLinear:
        return self._embedding[0].table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x)


FORMATS: dict[str, type[QuantLinear]] = {c.format: c for c in (Int8Linear, Int4Linear, W8A8Linear, FP8Linear,
                                                                 BlockInt4Linear, BlockInt8Linear)}


# ------------------------------------------------------------------------------ model surgery

def set_activation_bits(model: nn.Module, bits: int) -> int:
    """Make every quantized Linear of the model (the tied block head included) take decode-sized
    activations at ``bits`` (32, 16 or 8) in the native kernels; returns how many modules it set."""
    if bits not in ACT_BITS:
        raise LmforgeError(f"activation bits must be one of {', '.join(map(str, ACT_BITS))}, got {bits}")
    n = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.act_bits = bits
            n += 1
    return n


def decoder_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear inside the decoder layers, e.g. ``layers.0.attn.wqkv``.
    Embeddings, lm_head and proj_in/proj_out are not decoder-layer Linears and stay unquantized."""
    return [(f"layers.{name}", m) for name, m in model.layers.named_modules()
            if isinstance(m, (nn.Linear, QuantLinear))]


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def empty_quantized(model: nn.Module, quantization: dict, names: set[str], where: str) -> None:
    """Put empty QuantLinears (on the meta device) where a checkpoint with tensor `names` and this
    quantization block has quantized decoder Linears, ready for load_state_dict(assign=True)."""
    cls = FORMATS.get(quantization.get("format"))
    if cls is None:
        raise LmforgeError(f"{where}: unknown quantized format {quantization.get('format')!r} "
                           f"(known: {', '.join(FORMATS)}); the folder was written by a newer lmforge")
    for name, m in decoder_linears(model):
        if f"{name}.qweight" not in names:
            continue
        has = {opt: f"{name}.{opt}" in names for opt in ("bias", "input_scale", "perm")}
        kwargs = {}
        if cls is Int4Linear:
            kwargs["group_size"] = int(quantization.get("group_size", -1))
        if cls is W8A8Linear:
            kwargs["static"] = f"{name}.act_scale" in names
        with torch.device("meta"):
            set_module(model, name, cls(m.in_features, m.out_features, **has, **kwargs))
