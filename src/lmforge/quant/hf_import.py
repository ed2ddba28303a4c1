"""Checkpoints quantized by other tools, read from a Hugging Face folder whose config.json has a
``quantization_config``: GPTQ (AutoGPTQ / GPTQModel) and AWQ (AutoAWQ GEMM), 4 bits.

Layouts (W is the [N out, K in] weight, G = K / group_size groups):

- GPTQ: ``qweight`` int32 [K/8, N], eight input rows per word (row 8i+j in bits 4j..4j+3);
  ``qzeros`` int32 [G, N/8], eight output columns per word in the same order; ``scales`` fp16 [G, N];
  ``g_idx`` int32 [K], the group of every input row (not sorted with act-order / desc_act).
  W[n, k] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n], where the stored zero is z - 1 in the
  original format (``checkpoint_format`` "gptq", the default) and z itself in GPTQModel's "gptq_v2".
- AWQ GEMM: ``qweight`` int32 [K, N/8] and ``qzeros`` int32 [G, N/8], eight output columns per word
  interleaved: nibble i holds column 8c + (0, 2, 4, 6, 1, 3, 5, 7)[i]; ``scales`` fp16 [G, N];
  W[n, k] = (q[k, n] - z[k // gs, n]) * s[k // gs, n].

Each layer becomes an Int4Linear exactly: act-order becomes an input permutation that sorts the
rows by group, so every group is contiguous; q, k, v (and gate, up) are then joined along output
rows into lmforge's fused wqkv (w_in), which needs their permutations to agree (they do when the
three were quantized from the same inputs, as GPTQ does).
"""
from __future__ import annotations

from collections import defaultdict

import torch

from ..errors import LmforgeError
from ..models.base import FUSED_PARTS
from .formats import pack_int4
from .linear import Int4Linear, decoder_linears, set_module

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
SUFFIXES = ("qweight", "qzeros", "scales", "g_idx", "bias")


def unpack_int32(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words -> their eight 4-bit values 0..15 (nibble j at bits 4j), laid out along `dim`."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    nibbles = (packed.unsqueeze(-1) >> shifts) & 0xF  # [..., 8]
    if dim == 0:  # [R, C, 8] -> [R, 8, C] -> [8R, C]
        return nibbles.permute(0, 2, 1).reshape(-1, packed.shape[1])
    return nibbles.reshape(packed.shape[0], -1)


def read_gptq(t: dict[str, torch.Tensor], group_size: int, v2: bool) -> Int4Linear:
    q = unpack_int32(t["qweight"], dim=0)                      # [K, N]
    z = unpack_int32(t["qzeros"], dim=1) + (0 if v2 else 1)    # [G, N]
    K, N = q.shape
    g_idx = t.get("g_idx")
    g_idx = (torch.arange(K) // group_size) if g_idx is None else g_idx.long()
    return _int4_module(q.t(), z.t(), t["scales"].float().t(), g_idx, t.get("bias"))


def read_awq(t: dict[str, torch.Tensor], group_size: int) -> Int4Linear:
    order = torch.argsort(torch.tensor(AWQ_ORDER))  # column 8c + j sits at nibble order[j]
    def unpack(packed):
        nib = unpack_int32(packed, dim=1).reshape(packed.shape[0], -1, 8)
        return nib[..., order].reshape(packed.shape[0], -1)
    q, z = unpack(t["qweight"]), unpack(t["qzeros"])           # [K, N], [G, N]
    K = q.shape[0]
    return _int4_module(q.t(), z.t(), t["scales"].float().t(), torch.arange(K) // group_size, t.get("bias"))


def _int4_module(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor, g_idx: torch.Tensor,
                 bias: torch.Tensor | None) -> Int4Linear:
    """Int4Linear for codes q [N, K], zeros z and scales s [N, G], input row groups g_idx [K]."""
    N, K = q.shape
    G = s.shape[1]
    if K % G or (z < 0).any() or (z > 16).any():  # 16: a zero of 0 stored as -1 in the v1 format wraps
        raise ValueError("groups of unequal size or zero points outside 0..16")
    gs = K // G
    perm = None
    if not torch.equal(g_idx, torch.arange(K) // gs):
        perm = torch.argsort(g_idx, stable=True)
        if not torch.equal(g_idx[perm], torch.arange(K) // gs):
            raise ValueError("g_idx does not give every group the same number of input rows")
        q = q[:, perm]
    m = Int4Linear(K, N, bias is not None, perm=perm is not None, group_size=gs)
    m._set({"qweight": pack_int4(q), "scales": s, "zeros": z.to(torch.uint8)}, bias)
    if perm is not None:
        m.perm = perm
    return m


class ImportedQuantSource:
    """An HFSource whose decoder Linears were quantized by GPTQ or AWQ tools."""

    def __init__(self, hf):
        self.hf = hf
        self.path, self.config, self.files = hf.path, hf.config, hf.files
        qc = hf.hf_config["quantization_config"]
        self.qc = qc
        method = str(qc.get("quant_method", "")).lower()
        where = hf.path / "config.json"
        if method not in ("gptq", "awq"):
            raise LmforgeError(f"{where}: quantization method {method!r} is not supported; lmforge reads "
                               "GPTQ and AWQ (GEMM) checkpoints, or quantizes a full-precision model itself")
        if int(qc.get("bits", 4)) != 4:
            raise LmforgeError(f"{where}: {method} with {qc.get('bits')} bits is not supported; only 4-bit is")
        if method == "awq" and str(qc.get("version", "gemm")).lower() != "gemm":
            raise LmforgeError(f"{where}: AWQ version {qc.get('version')!r} is not supported; only the GEMM layout is")
        if method == "gptq" and str(qc.get("checkpoint_format", "gptq")).lower() not in ("gptq", "gptq_v2"):
            raise LmforgeError(f"{where}: GPTQ checkpoint_format {qc.get('checkpoint_format')!r} is not "
                               "supported (gptq, gptq_v2)")
        self.method = method
        self._modules: dict[str, Int4Linear] | None = None

    # the quantized modules, converted and fused once
    def _quantized(self) -> dict[str, Int4Linear]:
        if self._modules is None:
            self._modules = self._read_modules()
        return self._modules

    def _read_modules(self) -> dict[str, Int4Linear]:
        from ..io.hf import iter_tensors

        group_size = int(self.qc.get("group_size", -1))
        v2 = str(self.qc.get("checkpoint_format", "gptq")).lower() == "gptq_v2"
        tensors: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        biases: dict[str, torch.Tensor] = {}
        for name, tensor in iter_tensors(self.files):
            prefix, _, suffix = name.rpartition(".")
            if suffix == "bias":
                biases[prefix] = tensor
            elif suffix in SUFFIXES:
                tensors[prefix][suffix] = tensor
        self._prefixes = set(tensors)
        parts: dict[str, dict[str | None, Int4Linear]] = defaultdict(dict)
        for prefix, t in tensors.items():
            if prefix in biases:
                t["bias"] = biases[prefix]
            try:
                target, part, _ = self.hf.match(f"{prefix}.weight")
                rows = t["qweight"].shape[0] * (8 if self.method == "gptq" else 1)  # K
                gs = rows if group_size == -1 else group_size
                module = read_gptq(t, gs, v2) if self.method == "gptq" else read_awq(t, gs)
            except (KeyError, TypeError):
                raise LmforgeError(f"{self.path}: quantized tensors {prefix}.* are incomplete or have no place "
                                   f"in a {self.config.architecture} model") from None
            except (ValueError, RuntimeError) as e:
                raise LmforgeError(f"{self.path}: {prefix} is not a valid {self.method.upper()} layer ({e})") from None
            parts[target.rsplit(".", 1)[0]][part] = module
        modules = {}
        for target, by_part in parts.items():
            order = (None,) if None in by_part else FUSED_PARTS[target.rsplit(".", 1)[-1]]
            if set(order) != set(by_part):
                raise LmforgeError(f"{self.path}: {target} needs quantized {'/'.join(order)}, "
                                   f"found {'/'.join(map(str, by_part))}")
            try:
                modules[target] = Int4Linear.cat([by_part[p] for p in order])
            except ValueError as e:
                raise LmforgeError(f"{self.path}: cannot fuse {'/'.join(order)} into {target}: {e}") from None
        return modules

    def prepare(self, model, dtype=None) -> None:
        modules = self._quantized()
        for name, _ in decoder_linears(model):
            if name in modules:
                set_module(model, name, modules[name])

    def tensors(self):
        from ..io.weights import map_weights

        modules = self._quantized()

        def plain():
            for name, tensor in self.hf.tensors():
                prefix, _, suffix = name.rpartition(".")
                if prefix in self._prefixes and suffix in SUFFIXES:
                    continue
                yield name, tensor

        yield from map_weights(plain(), self.hf.match, self.config, str(self.path))
        for target, module in modules.items():
            for key, value in module.state_dict().items():
                yield f"{target}.{key}", value

    def match(self, name: str):
        return name, None, None  # tensors() yields lmforge names

    def tokenizer(self):
        return self.hf.tokenizer()

    def describe(self):
        info = self.hf.describe()
        info["quantization"] = (f"{self.method.upper()} int4, group {self.qc.get('group_size')}, "
                                f"act-order {bool(self.qc.get('desc_act'))}")
        return info
