"""`lmforge info`: what a model is, without running it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .loader import open_source
from .models.transformer import Transformer


def _human(n: float, unit: str = "B") -> str:
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.1f} {prefix}{unit}" if prefix else f"{n:.0f} {unit}"
        n /= 1000
    return f"{n} {unit}"


def parameter_count(cfg) -> int:
    with torch.device("meta"):
        model = Transformer(cfg)
    model.tie_weights()
    return sum(p.numel() for p in model.parameters())


def describe(source) -> dict[str, Any]:
    src = open_source(source)
    cfg = src.config
    tok = src.tokenizer()
    files = [Path(f) for f in src.files]
    size = sum(f.stat().st_size for f in files)
    extra = src.describe()
    info = {
        "path": str(src.path),
        "format": extra.get("format"),
        "architecture": cfg.architecture,
        "parameters": f"{parameter_count(cfg):,} ({_human(parameter_count(cfg), '')})",
        "layers": cfg.n_layers,
        "hidden size": cfg.dim,
        "heads": f"{cfg.n_heads} query, {cfg.n_kv_heads} key/value, head dim {cfg.head_dim}",
        "context length": cfg.max_seq_len,
        "positions": cfg.pos + (f" (theta {cfg.rope_theta:g}, rotary dim {cfg.rotary_dim})" if cfg.pos == "rope" else ""),
        "weights dtype": extra.get("file_dtype") or "unknown",
        "quantization": extra.get("quantization") or "none",
        "tokenizer": f"{tok.vocab_size} tokens, chat template: {'yes' if tok.chat_template else 'no'}",
        "files": ", ".join(f"{f.name} ({_human(f.stat().st_size)})" for f in files),
        "total size": _human(size),
    }
    return info
