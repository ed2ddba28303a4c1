"""Quantize a loaded Transformer in place: RTN directly, GPTQ / AWQ / SmoothQuant decoder layer by
decoder layer on calibration activations.

Layer by layer: the calibration inputs of layer 0 are captured once; for each layer, hooks on its
Linears collect what the method needs (Hessians, activation statistics) in one pass, the layer is
quantized, and its quantized outputs become the next layer's inputs. Only one layer's statistics
exist at a time.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable

import torch
from torch import nn

from ..errors import LmforgeError
from .gptq import HessianAccumulator, gptq_linear
from .linear import W8A8Linear, decoder_linears, set_module
from .rtn import rtn_linear
from .smoothing import ActivationStats, awq_scales, fold_inverse_scale, fold_targets, smoothquant_search
from .spec import QuantSpec

CHUNK = 8  # calibration samples run through a layer at once


def check_group_size(model: nn.Module, spec: QuantSpec) -> None:
    if spec.format != "int4":
        return
    for name, m in decoder_linears(model):
        if spec.group_size != -1 and m.in_features % spec.group_size:
            raise LmforgeError(f"--group-size {spec.group_size} does not divide the input size {m.in_features} "
                               f"of {name}; choose a group size that divides it, or -1 (per channel)")
        if m.in_features % 2:
            raise LmforgeError(f"{name} has an odd input size ({m.in_features}); int4 packs two columns "
                               "per byte, use int8")


def layer_progress(items: Iterable, total: int, desc: str):
    """A tqdm bar on stderr when tqdm is installed, else one counter line per item."""
    try:
        from tqdm import tqdm
        return tqdm(items, total=total, desc=desc, unit="layer", file=sys.stderr)
    except ImportError:
        return _counter(items, total, desc)


def _counter(items, total, desc):
    start = time.monotonic()
    for i, item in enumerate(items, 1):
        yield item
        print(f"{desc}: layer {i}/{total} ({time.monotonic() - start:.0f}s)", file=sys.stderr, flush=True)


def quantize_model(model: nn.Module, spec: QuantSpec, calib: torch.Tensor | None = None,
                   progress: bool = True) -> nn.Module:
    """Replace every Linear inside the decoder layers by a QuantLinear (embeddings and lm_head stay
    in the model dtype). calib: token ids [N, L], needed by GPTQ, AWQ and SmoothQuant."""
    check_group_size(model, spec)
    if not spec.needs_calibration:
        for name, m in decoder_linears(model):
            set_module(model, name, _like(rtn_linear(m.weight, m.bias, spec), m))
        return model
    if calib is None:
        raise LmforgeError(f"--method {spec.method} needs calibration text")
    layers = model.layers
    if progress:
        layers = layer_progress(layers, len(model.layers), f"{spec.method} int{spec.bits}")
    with torch.no_grad():
        inputs = first_layer_inputs(model, calib)
        for layer in layers:
            quantize_layer(layer, model.cfg, inputs, spec)
            inputs = [(layer(x, *args), args) for x, args in inputs]  # what the next layer sees
    return model


def _like(new: nn.Module, old: nn.Module) -> nn.Module:
    """`new` on the device of `old`, its bias in old's dtype."""
    new = new.to(old.weight.device)
    if new.bias is not None:
        new.bias = new.bias.to(old.weight.dtype)
    return new


class _Stop(Exception):
    pass


def first_layer_inputs(model: nn.Module, calib: torch.Tensor) -> list[tuple[torch.Tensor, tuple]]:
    """[(x [B, L, D], the other positional arguments of a decoder layer), ...] for token ids [N, L]
    in chunks of CHUNK samples, captured at layer 0 while running the model's own forward
    (embeddings, positions and mask exactly as the engine makes them)."""
    from ..generation.engine import Engine

    param = next(model.parameters())
    engine = Engine(model, param.device, param.dtype)
    captured: list = []

    def grab(module, args):
        captured.append(_plain(args))
        raise _Stop

    handle = model.layers[0].register_forward_pre_hook(grab)
    try:
        for chunk in calib.split(CHUNK):
            try:
                engine.score(chunk)
            except _Stop:
                pass
    finally:
        handle.remove()
    return [(args[0], args[1:]) for args in captured]


def _plain(value):
    """A copy made outside inference mode (the engine scores under torch.inference_mode)."""
    if isinstance(value, torch.Tensor):
        with torch.inference_mode(False):
            return value.clone()
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


# -------------------------------------------------------------------------------- one layer

def _collect(layer: nn.Module, inputs, make) -> dict[str, object]:
    """Run the layer on every input with a hook on each Linear feeding make(linear) -> collector."""
    linears = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
    collectors = {name: make(m) for name, m in linears.items()}
    handles = [m.register_forward_pre_hook(lambda mod, a, c=collectors[name]: c.add(a[0]))
               for name, m in linears.items()]
    try:
        for x, args in inputs:
            layer(x, *args)
    finally:
        for h in handles:
            h.remove()
    return collectors


def quantize_layer(layer: nn.Module, cfg, inputs, spec: QuantSpec) -> None:
    """Quantize the Linears of one decoder layer with the spec's method, in place."""
    linears = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
    if spec.method == "gptq":
        hessians = _collect(layer, inputs, lambda m: HessianAccumulator(m.in_features))
        for name, m in linears.items():
            set_module(layer, name, _like(gptq_linear(m.weight, m.bias, hessians[name].H, spec), m))
        return
    rows = sum(x.shape[0] * x.shape[1] for x, _ in inputs)
    stats = _collect(layer, inputs, lambda m: ActivationStats(m.in_features, rows))
    targets = fold_targets(layer, cfg)
    static = spec.act_quant == "static"
    scales = {}
    for name, m in linears.items():  # search every scale on the original weights first
        if spec.method == "awq":
            scales[name] = awq_scales(m.weight, stats[name], spec)
        else:
            scales[name], _ = smoothquant_search(m.weight, stats[name], spec.alpha, static)
    folded = {}
    for name, m in linears.items():  # then fold all: W s, and 1/s into the producer of x
        s = scales[name].to(m.weight.device)
        m.weight.mul_(s.to(m.weight.dtype))
        folded[name] = fold_inverse_scale(targets.get(name), s)
    for name, m in linears.items():  # and quantize the scaled weights
        s = scales[name]
        if spec.method == "awq":
            new = rtn_linear(m.weight, m.bias, spec)
        else:
            act_scale = (stats[name].absmax / s).max() / 127 if static else None
            new = W8A8Linear.from_float(m.weight, m.bias, act_scale)
        if not folded[name]:
            new.input_scale = (1 / s).float()
        set_module(layer, name, _like(new, m))
