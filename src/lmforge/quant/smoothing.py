"""Per-input-channel scaling shared by AWQ and SmoothQuant.

Both rewrite y = x W^T as y = (x / s) (W s)^T for a vector s [K] > 0: AWQ picks s to protect the
weights of large activations from rounding, SmoothQuant to move activation outliers into the
weights. The 1/s is folded into the op that produces x when that op is linear per channel (the
norm before wqkv / w_in, the v rows of wqkv before wo with MHA, the up rows of w_in before w_out in
a gated MLP); otherwise the QuantLinear keeps it as ``input_scale``.
"""
from __future__ import annotations

import torch
from torch import nn

from . import formats
from .rtn import fake_quantize
from .spec import QuantSpec

AWQ_GRID = 20
ALPHA_GRID = tuple(round(0.05 * i, 2) for i in range(21))


class ActivationStats:
    """Per-channel |x| max and mean over every row fed, plus up to `keep` rows sampled evenly."""

    def __init__(self, in_features: int, total_rows: int, keep: int = 2048):
        self.absmax = torch.zeros(in_features)
        self.abssum = torch.zeros(in_features)
        self.n = 0
        self.stride = max(1, -(-total_rows // keep))
        self.rows: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float().cpu()  # [T, K]
        self.absmax = torch.maximum(self.absmax, x.abs().amax(0))
        self.abssum += x.abs().sum(0)
        self.n += x.shape[0]
        self.rows.append(x[::self.stride].clone())

    @property
    def absmean(self) -> torch.Tensor:
        return self.abssum / max(self.n, 1)

    def sample(self) -> torch.Tensor:
        return torch.cat(self.rows)  # [T', K]


def _output_error(X: torch.Tensor, Y: torch.Tensor, W_hat: torch.Tensor) -> float:
    return float((X @ W_hat.t() - Y).pow(2).mean())


def awq_scales(W: torch.Tensor, stats: ActivationStats, spec: QuantSpec) -> torch.Tensor:
    """s = mean|x|^r, normalised, with r on a grid in [0, 1) minimising the output error of the
    RTN-quantized (W s) on the sampled inputs."""
    X = stats.sample()
    W = W.float().cpu()
    Y = X @ W.t()
    x_mean = stats.absmean.clamp(min=1e-4)
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for i in range(AWQ_GRID):
        s = x_mean.pow(i / AWQ_GRID)
        s = s / (s.max() * s.min()).sqrt()
        err = _output_error(X, Y, fake_quantize(W * s, spec) / s)
        if err < best:
            best, best_s = err, s
    return best_s


def smoothquant_scales(W: torch.Tensor, stats: ActivationStats, alpha: float) -> torch.Tensor:
    """s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha) (SmoothQuant eq. 4)."""
    w_max = W.float().cpu().abs().amax(0).clamp(min=1e-5)
    return (stats.absmax.clamp(min=1e-5).pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)


def w8a8_error(W: torch.Tensor, s: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, static: bool) -> float:
    Xs = X / s
    act_scale = Xs.abs().max() / formats.INT8_MAX if static else None
    Wq = formats.dequantize_int8(*formats.quantize_int8(W.float() * s))
    return _output_error(formats.fake_quantize_act(Xs, act_scale), Y, Wq)


def smoothquant_search(W: torch.Tensor, stats: ActivationStats, alpha, static: bool) -> tuple[torch.Tensor, float]:
    """(s, alpha): the given alpha, or with alpha="auto" the grid alpha of least W8A8 output error."""
    if alpha != "auto":
        return smoothquant_scales(W, stats, alpha), alpha
    X = stats.sample()
    W = W.float().cpu()
    Y = X @ W.t()
    errors = {a: w8a8_error(W, smoothquant_scales(W, stats, a), X, Y, static) for a in ALPHA_GRID}
    best = min(errors, key=errors.get)
    return smoothquant_scales(W, stats, best), best


# ------------------------------------------------------------------------------------- folding

def fold_targets(block: nn.Module, cfg) -> dict[str, object]:
    """For each Linear of a decoder block ("attn.wqkv", ...), the op its 1/s can be folded into:
    a norm module, ("rows", linear, slice) of another Linear's output rows, or None."""
    norm_feeds_one = not block.post_norm and not (block.parallel and block.mlp_norm is None)
    targets = {"attn.wqkv": block.attn_norm if norm_feeds_one else None,
               "mlp.w_in": block.mlp_norm if norm_feeds_one else None,
               "attn.wo": None, "mlp.w_out": None}
    if cfg.n_kv_heads == cfg.n_heads and cfg.clip_qkv is None:  # each wo input channel is one v row
        start = cfg.q_size + cfg.kv_size
        targets["attn.wo"] = ("rows", block.attn.wqkv, slice(start, start + cfg.kv_size))
    if block.mlp.gated:
        targets["mlp.w_out"] = ("rows", block.mlp.w_in, slice(cfg.hidden_dim, 2 * cfg.hidden_dim))
    elif cfg.act == "relu":  # relu(x / s) = relu(x) / s for s > 0
        targets["mlp.w_out"] = ("rows", block.mlp.w_in, slice(0, cfg.hidden_dim))
    return targets


def fold_inverse_scale(target, s: torch.Tensor) -> bool:
    """Divide the output of `target` by s [K]; False when there is nothing to fold into."""
    if target is None:
        return False
    with torch.no_grad():
        if isinstance(target, tuple):
            _, linear, rows = target
            linear.weight[rows] /= s[:, None].to(linear.weight.dtype)
            if linear.bias is not None:
                linear.bias[rows] /= s.to(linear.bias.dtype)
            return True
        target.weight /= s.to(target.weight.dtype)
        if getattr(target, "bias", None) is not None:
            target.bias /= s.to(target.bias.dtype)
    return True
