"""Stream checkpoint tensors into a Transformer built on the meta device."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch

from ..config import ModelConfig
from ..errors import LmforgeError
from ..models.base import FUSED_PARTS
from ..models.transformer import Transformer

Match = Callable[[str], "tuple[str, str | None, Callable | None] | None"]


def _fused_parts(target: str) -> tuple[str, ...]:
    module = target.rsplit(".", 2)[-2]
    return FUSED_PARTS[module]


def map_weights(tensors: Iterable[tuple[str, torch.Tensor]], match: Match, cfg: ModelConfig,
                source: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Rename (and fuse, and re-layout) checkpoint tensors into lmforge parameter names."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for name, tensor in tensors:
        try:
            m = match(name)
        except KeyError:
            unknown.append(name)
            continue
        if m is None:
            continue
        target, part, transform = m
        if transform is not None:
            tensor = transform(tensor, cfg)
        if part is None:
            yield target, tensor
            continue
        parts = pending.setdefault(target, {})
        parts[part] = tensor
        order = _fused_parts(target)
        if all(p in parts for p in order):
            yield target, torch.cat([parts[p] for p in order], dim=0)
            del pending[target]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise LmforgeError(f"{source}: unexpected tensors for {cfg.architecture}: {shown}; "
                           "the checkpoint does not match its config.json")
    if pending:
        incomplete = ", ".join(f"{t} (has {'/'.join(p)})" for t, p in pending.items())
        raise LmforgeError(f"{source}: incomplete fused weights: {incomplete}")


def build_model(cfg: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]], match: Match,
                dtype: torch.dtype, device: torch.device | str, source: str,
                prepare: Callable[[Transformer, torch.dtype], None] | None = None) -> Transformer:
    """The model with the checkpoint's weights; `prepare(model, dtype)` may first swap modules of the
    meta-device model (quantized Linears), whose tensors keep their stored dtype unless they are fp32."""
    with torch.device("meta"):
        model = Transformer(cfg)
    if prepare is not None:
        prepare(model, dtype)
    expected = {k: v for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in map_weights(tensors, match, cfg, source):
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # some checkpoints store the tied head too
        want = expected.get(name)
        if want is None:
            raise LmforgeError(f"{source}: tensor {name!r} has no place in a {cfg.architecture} model")
        if tuple(tensor.shape) != tuple(want.shape):
            raise LmforgeError(f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                               f"the config implies {tuple(want.shape)}")
        if not tensor.is_floating_point():  # integer codes: their dtype is their layout (int8 / uint8 q8)
            target = tensor.dtype
        else:  # fp8 and other quantized floats keep the module's dtype; fp32 weights take --dtype
            target = want.dtype if want.dtype != torch.float32 else dtype
        state[name] = tensor.to(device=device, dtype=target)
    missing = sorted(set(expected) - set(state))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise LmforgeError(f"{source}: missing weights {shown}; the checkpoint is incomplete")
    model.load_state_dict(state, strict=False, assign=True)
    return _ready(model, device)


def _ready(model: Transformer, device) -> Transformer:
    """A model whose weights are in place: tied head, recomputed buffers, inference mode."""
    model.tie_weights()
    model.init_buffers(device)
    model.requires_grad_(False)
    return model.eval()


def random_model(cfg: ModelConfig, dtype: torch.dtype, device: torch.device | str, seed: int = 0) -> Transformer:
    """A model of the config's shape with random weights made on `device` (matrices and embeddings
    normal with std 0.02, biases 0, norm weights 1): benchmarks of a shape without its checkpoint."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to(dtype=dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=generator)
    return _ready(model, device)
