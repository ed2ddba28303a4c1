"""LoRA adapters saved by PEFT (adapter_config.json + adapter_model.safetensors), on lmforge's fused layers.

A PEFT tensor ``base_model.model.<module>.lora_A.weight`` [r, in] with its ``lora_B`` [out, r] updates
the checkpoint weight ``<module>.weight`` by scale * B @ A (scale = lora_alpha / r, or / sqrt(r) with
rsLoRA; transposed for Conv1D layers saved with fan_in_fan_out). The family's weight-name rules say
where that weight lives in lmforge: which Linear, which rows of a fused one (q/k/v in ``attn.wqkv``,
gate/up in ``mlp.w_in``), and the transform to lmforge's layout, which is applied to the update too.

Merged (the default): the updates are added to the weights at load. Unmerged: each updated Linear is
wrapped by a ``LoraLinear`` that adds x @ A^T @ B^T for the active adapter only, so several adapters
can be loaded and one chosen per request.
"""
from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .errors import LmforgeError
from .models.base import FUSED_PARTS

LORA_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight")
UNSUPPORTED_OPTIONS = ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform")


@dataclass
class Delta:
    """One adapter's update of one lmforge Linear, in lmforge's layout: rows += b @ a (scale folded
    into b), or rows += b when a is None (a dense update, for layouts a family transform reorders)."""
    rows: slice
    b: torch.Tensor                # [rows, r] or [rows, in]
    a: torch.Tensor | None = None  # [r, in]

    def dense(self) -> torch.Tensor:
        return self.b if self.a is None else self.b @ self.a

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., rows]
        if self.a is None:
            return x @ self.b.T
        return (x @ self.a.T) @ self.b.T


# ------------------------------------------------------------------------------------ reading

def read_adapter(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """adapter_config.json and the tensors of adapter_model.safetensors."""
    folder = Path(folder)
    cfg_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_path.exists() or not weights.exists():
        raise LmforgeError(f"{folder}: not a PEFT adapter folder; it needs adapter_config.json and "
                           "adapter_model.safetensors (saved by peft's save_pretrained)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{cfg_path}: invalid JSON ({e})") from None
    if config.get("peft_type") != "LORA":
        raise LmforgeError(f"{cfg_path}: peft_type is {config.get('peft_type')!r}; only LoRA adapters are supported")
    used = [k for k in UNSUPPORTED_OPTIONS if config.get(k)]
    if used:
        raise LmforgeError(f"{cfg_path}: {', '.join(used)} is not supported; use a plain LoRA adapter")
    from .io.hf import iter_tensors
    return config, dict(iter_tensors([weights]))


def lora_pairs(tensors: dict[str, torch.Tensor], source: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{checkpoint module name: (A [r, in], B [out, r])}."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        m = LORA_KEY.fullmatch(name)
        if m is None:
            raise LmforgeError(f"{source}: tensor {name!r} is not a LoRA A/B weight; lmforge applies LoRA "
                               "updates of Linear layers only")
        pairs.setdefault(m.group(1), {})[m.group(2)] = tensor
    incomplete = [k for k, v in pairs.items() if len(v) != 2]
    if incomplete:
        raise LmforgeError(f"{source}: {incomplete[0]} has lora_A or lora_B but not both; the file is incomplete")
    return {k: (v["A"], v["B"]) for k, v in pairs.items()}


# ------------------------------------------------------------------------------------ mapping

def part_rows(cfg: ModelConfig, target: str, part: str | None, n_rows: int) -> slice:
    """The rows of a (fused) lmforge Linear that one checkpoint weight fills."""
    if part is None:
        return slice(0, n_rows)
    module = target.rsplit(".", 2)[-2]
    sizes = {"q": cfg.q_size, "k": cfg.kv_size, "v": cfg.kv_size, "gate": cfg.hidden_dim, "up": cfg.hidden_dim}
    start = sum(sizes[p] for p in FUSED_PARTS[module][:FUSED_PARTS[module].index(part)])
    return slice(start, start + sizes[part])


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) features of a Linear or quantized Linear."""
    if hasattr(module, "out_features") and hasattr(module, "in_features"):
        return module.out_features, module.in_features
    return tuple(module.weight.shape)


def adapter_deltas(folder: str | Path, model, match, dtype: torch.dtype, device) -> dict[str, list[Delta]]:
    """{lmforge Linear module name: [Delta, ...]} for one adapter folder; match is the family's rule
    lookup (checkpoint name -> (target, part, transform))."""
    config, tensors = read_adapter(folder)
    cfg: ModelConfig = model.cfg
    r, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    deltas: dict[str, list[Delta]] = {}
    for module, (a, b) in lora_pairs(tensors, str(folder)).items():
        where = f"{folder}: {module}"
        if a.shape[0] != r or b.shape[1] != r:
            raise LmforgeError(f"{where}: rank mismatch (lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}, "
                               f"adapter_config.json r={r}); the adapter files do not belong together")
        try:
            m = match(module + ".weight")
        except KeyError:
            m = None
        if m is None:
            raise LmforgeError(f"{where} has no counterpart in a {cfg.architecture} model; the adapter was "
                               "made for another architecture")
        target, part, transform = m
        linear = target.rsplit(".", 1)[0]
        out_rows, in_dim = linear_shape(model.get_submodule(linear))
        rows = part_rows(cfg, target, part, out_rows)
        a, b = a.float(), b.float() * scale
        if transform is None and not config.get("fan_in_fan_out"):
            delta, got = Delta(rows, b, a), (b.shape[0], a.shape[1])
        else:  # the family re-lays out this weight: re-lay out the dense update the same way
            update = (b @ a).T if config.get("fan_in_fan_out") else b @ a
            if transform is not None:
                update = transform(update, cfg)
            delta, got = Delta(rows, update), tuple(update.shape)
        want = (rows.stop - rows.start, in_dim)
        if tuple(got) != want:
            raise LmforgeError(f"{where}: the update is {tuple(got)} but the model's weight there is {want}; "
                               "the adapter was made for a model of another size")
        delta.b = delta.b.to(dtype=dtype, device=device)
        delta.a = None if delta.a is None else delta.a.to(dtype=dtype, device=device)
        deltas.setdefault(linear, []).append(delta)
    return deltas


# ------------------------------------------------------------------------------------ applying

@torch.no_grad()
def merge(model, deltas: dict[str, list[Delta]]) -> None:
    """Add the updates to the weights (before any quantization)."""
    for linear, ds in deltas.items():
        weight = model.get_submodule(linear).weight
        for d in ds:
            weight[d.rows] += d.dense().to(weight.dtype)


class LoraLinear(nn.Module):
    """A Linear (or quantized Linear) plus the updates of the active adapter, not merged."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.deltas: dict[str, list[Delta]] = {}
        self.active: str | None = None

    @property
    def weight(self):
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # [..., out]
        for d in self.deltas.get(self.active, ()):
            y[..., d.rows] += d.apply(x.to(d.b.dtype)).to(y.dtype)
        return y


class Adapters:
    """Unmerged adapters on a model, by name; `use(name)` makes one active (None: the base model)."""

    def __init__(self, model):
        self.model = model
        self.names: list[str] = []
        self.modules: list[LoraLinear] = []

    def add(self, name: str, deltas: dict[str, list[Delta]]) -> None:
        if name in self.names:
            raise LmforgeError(f"adapter name {name!r} is given twice; name each adapter once")
        for linear, ds in deltas.items():
            module = self.model.get_submodule(linear)
            if not isinstance(module, LoraLinear):
                parent, _, child = linear.rpartition(".")
                module = LoraLinear(module)
                setattr(self.model.get_submodule(parent), child, module)
                self.modules.append(module)
            module.deltas[name] = ds
        self.names.append(name)

    @contextmanager
    def use(self, name: str | None):
        if name is not None and name not in self.names:
            raise LmforgeError(f"no adapter named {name!r}; loaded: {', '.join(self.names) or 'none'}")
        for m in self.modules:
            m.active = name
        try:
            yield
        finally:
            for m in self.modules:
                m.active = None


def named_adapters(adapters) -> dict[str, Path]:
    """A folder, a list of folders (named by their folder name) or {name: folder}."""
    if isinstance(adapters, (str, Path)):
        adapters = [adapters]
    if isinstance(adapters, dict):
        return {str(k): Path(v) for k, v in adapters.items()}
    named: dict[str, Path] = {}
    for folder in adapters:
        name = Path(folder).name
        if name in named:
            raise LmforgeError(f"two adapters are named {name!r} by their folders; pass a dict {{name: folder}}")
        named[name] = Path(folder)
    return named


def attach(model, source, adapters, merged: bool, dtype: torch.dtype, device) -> Adapters | None:
    """Merge the adapters into the model's weights, or wrap its Linears to apply them per request."""
    named = named_adapters(adapters)
    if merged and len(named) > 1:
        raise LmforgeError(f"{len(named)} adapters cannot all be merged into one model; load them unmerged "
                           "(merge_adapters=False) and choose one per request")
    if merged:
        merge(model, adapter_deltas(next(iter(named.values())), model, source.match, dtype, device))
        return None
    loaded = Adapters(model)
    for name, folder in named.items():
        loaded.add(name, adapter_deltas(folder, model, source.match, dtype, device))
    return loaded
