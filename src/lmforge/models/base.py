"""What a family adapter is: a config mapping plus a declarative weight-name map.

A family module (``llama.py``, ``gpt2.py``, ...) defines ``FAMILY = Family(...)``:

- ``config_from_hf(hf_config: dict) -> ModelConfig``
- ``rules``: ``Rule(pattern, target, part=None, transform=None)``. ``pattern`` is a regex matched against
  the whole checkpoint tensor name; ``target`` is the lmforge parameter name, formatted with the regex
  groups (``"layers.{0}.attn.wqkv.weight"``). Targets that are fused in lmforge (``attn.wqkv`` from
  q/k/v, ``mlp.w_in`` from gate/up) name their ``part``; the loader concatenates the parts in the
  canonical order once all have arrived. ``transform(tensor, cfg)`` reshapes a tensor from the
  family's layout into lmforge's (transposed Conv1D weights, per-head interleaved QKV, ...).
- ``ignore``: regexes of checkpoint entries that are not weights (cached rotary tables, causal masks).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..config import ModelConfig

FUSED_PARTS = {"wqkv": ("q", "k", "v"), "w_in": ("gate", "up")}

Transform = Callable[[torch.Tensor, ModelConfig], torch.Tensor]


@dataclass(frozen=True)
class Rule:
    pattern: str
    target: str
    part: str | None = None
    transform: Transform | None = None


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    config_from_hf: Callable[[dict[str, Any]], ModelConfig]
    rules: tuple[Rule, ...]
    ignore: tuple[str, ...] = ()
    _compiled: list = field(default_factory=list, compare=False, repr=False)

    def match(self, name: str):
        """(target, part, transform) for a checkpoint name; None if it is to be ignored.

        Raises KeyError for a name no rule knows."""
        if not self._compiled:
            self._compiled.extend((re.compile(r.pattern), r) for r in self.rules)
        for rx, rule in self._compiled:
            m = rx.fullmatch(name)
            if m:
                return rule.target.format(*m.groups()), rule.part, rule.transform
        if any(re.fullmatch(p, name) for p in self.ignore):
            return None
        raise KeyError(name)


# ------------------------------------------------------------------ helpers shared by HF adapters

HF_ACTIVATIONS = {
    "silu": "silu", "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "relu": "relu",
}


def hf_activation(name: str) -> str:
    try:
        return HF_ACTIVATIONS[name]
    except KeyError:
        raise NotImplementedError(f"activation {name!r} is not supported") from None


def hf_rope(c: dict[str, Any], default_theta: float = 10000.0) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from either transformers v5 ``rope_parameters`` or v4 keys."""
    params = c.get("rope_parameters") or {}
    theta = params.get("rope_theta", c.get("rope_theta", default_theta))
    scaling = c.get("rope_scaling")
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = dict(params)
    if scaling is not None and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return float(theta), scaling


def hf_rotary_dim(c: dict[str, Any], head_dim: int, default_factor: float, legacy_key: str) -> int:
    """Channels per head that rotate: head_dim * partial_rotary_factor, read from v5 ``rope_parameters``,
    then the top-level ``legacy_key`` older configs use (``rotary_pct``, ``partial_rotary_factor``)."""
    params = c.get("rope_parameters") or {}
    factor = params.get("partial_rotary_factor", c.get(legacy_key, default_factor))
    rotary_dim = int(head_dim * factor)
    if rotary_dim % 2 or rotary_dim == 0:
        raise NotImplementedError(f"partial rotary factor {factor} gives {rotary_dim} rotary channels per head "
                                  "(need an even number above 0)")
    return rotary_dim


def hf_tokens(c: dict[str, Any]) -> dict[str, Any]:
    eos = c.get("eos_token_id")
    eos = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
    return {"bos_token_id": c.get("bos_token_id"), "eos_token_ids": eos, "pad_token_id": c.get("pad_token_id")}


def split_heads_qkv(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """[H, 3, hd, ...] per-head interleaved fused QKV (GPT-NeoX, Bloom, Falcon-RW) -> [q; k; v]."""
    rest = t.shape[1:]
    t = t.reshape(cfg.n_heads, 3, cfg.head_dim, *rest)
    return t.transpose(0, 1).reshape(3 * cfg.n_heads * cfg.head_dim, *rest)


def transpose(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Conv1D weights are stored [in, out]; nn.Linear wants [out, in]."""
    return t.t().contiguous() if t.dim() == 2 else t
