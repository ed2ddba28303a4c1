"""GPTQ (Frantar et al., 2022): quantize a weight column by column, moving each column's rounding
error onto the columns not yet quantized, weighted by the inverse Hessian H = 2/n * sum x x^T of the
layer's inputs.

Memory: the caller keeps one Hessian [K, K] per Linear of the current decoder layer only.
"""
from __future__ import annotations

import torch

from . import formats
from .linear import Int4Linear, Int8Linear, QuantLinear
from .spec import QuantSpec

BLOCK = 128  # columns updated together (lazy batch updates)


class HessianAccumulator:
    """Running H = 2/n * sum x x^T over the rows of every input x [..., K] it is fed."""

    def __init__(self, in_features: int):
        self.H = torch.zeros(in_features, in_features)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float().cpu()  # [T, K]
        t = x.shape[0]
        self.H *= self.n / (self.n + t)
        self.n += t
        x = x * (2 / self.n) ** 0.5
        self.H += x.t() @ x


def _inverse_hessian_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 after dampening the diagonal by damp * mean(diag)."""
    H = H.clone()
    H.diagonal().add_(damp * H.diagonal().mean())
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


def _grid_params(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per row [N, 1] for the columns w [N, g] of one group."""
    if spec.bits == 8:
        return formats.int8_scales(w)[:, None], torch.zeros(w.shape[0], 1)
    scales, zeros = formats.int4_params(w, w.shape[1], spec.scheme == "sym")
    return scales, zeros


def _round_to_grid(col: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    lo, hi = (-formats.INT8_MAX, formats.INT8_MAX) if bits == 8 else (0, 15)
    return (torch.round(col / scale + zero).clamp(lo, hi) - zero) * scale


def gptq_linear(weight: torch.Tensor, bias: torch.Tensor | None, H: torch.Tensor, spec: QuantSpec) -> QuantLinear:
    """Quantize weight [N, K] given the Hessian H [K, K] of its inputs; int8 per channel or int4 grouped."""
    W = weight.float().cpu().clone()
    bias = None if bias is None else bias.cpu()
    N, K = W.shape
    H = H.clone()
    dead = H.diagonal() == 0  # input channels that were always zero: any weight will do
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(H.diagonal(), descending=True) if spec.act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    Hinv = _inverse_hessian_factor(H, spec.damp)
    gs = K if spec.bits == 8 or spec.group_size == -1 else spec.group_size

    Q = torch.zeros_like(W)
    scales, zeros = [], []
    for b0 in range(0, K, BLOCK):
        b1 = min(b0 + BLOCK, K)
        W1, Hinv1 = W[:, b0:b1].clone(), Hinv[b0:b1, b0:b1]
        Err = torch.zeros_like(W1)
        for i in range(b1 - b0):
            col = b0 + i
            if col % gs == 0:  # a group starts: its grid comes from the error-updated weights
                group = W1[:, i:i + gs] if i + gs <= b1 - b0 else W[:, col:col + gs]
                scale, zero = _grid_params(group, spec)
                scales.append(scale)
                zeros.append(zero)
            w = W1[:, i]
            q = _round_to_grid(w, scale[:, 0], zero[:, 0], spec.bits)
            Q[:, col] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err[:, i] = err
        W[:, b1:] -= Err @ Hinv[b0:b1, b1:]

    grouped_order = perm is not None and spec.bits == 4 and gs < K
    if perm is not None and not grouped_order:  # per-channel grids do not depend on column order
        Q = Q[:, torch.argsort(perm)]
    scales = torch.cat(scales, dim=1)  # [N, G]
    if spec.bits == 8:
        m = Int8Linear(K, N, bias is not None)
        return m._set({"qweight": torch.round(Q / scales).to(torch.int8), "scales": scales[:, 0]}, bias)
    zeros = torch.cat(zeros, dim=1)
    codes = formats.quantize_int4_values(Q, scales, zeros, gs)  # exact: Q lies on the grid
    m = Int4Linear(K, N, bias is not None, perm=grouped_order, group_size=gs)
    m._set({"qweight": formats.pack_int4(codes), "scales": scales, "zeros": zeros.to(torch.uint8)}, bias)
    if grouped_order:
        m.perm = perm
    return m
