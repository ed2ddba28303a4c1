"""One task on several models or precisions: loading, the comparison table and its JSON file."""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import LmforgeError
from ..loader import ALIASES


def load_llm(model, dtype="float32", device="cpu", threads=None, quantize: str | None = None, act_bits: int = 32):
    """An lmforge.LLM, quantized at load time with `quantize` (a scheme name such as int8) unless it is
    None, "" or "none". act_bits 32 (the default here): quantized weights score with fp32 activations,
    the exact product of the dequantized weights (see LLM's act_bits)."""
    from ..api import LLM

    quantize = None if quantize in ("", "none") else quantize
    return LLM(model, dtype=dtype, device=device, threads=threads, quantize=quantize, act_bits=act_bits)


@dataclass(frozen=True)
class Variant:
    label: str               # as written in --compare
    model: str | None        # model source (None: the default model)
    quantize: str | None     # quantization scheme applied at load time


def _is_model(item: str) -> bool:
    return item in ALIASES or "/" in item or item.endswith(".gguf") or Path(item).exists()


def _check_scheme(item: str) -> None:
    """Refuse a --compare word that is neither a model nor a quantization scheme, before anything runs."""
    from ..quant import parse_quantize

    try:
        parse_quantize(item)
    except LmforgeError:
        raise LmforgeError(f"--compare item {item!r} is neither a model (path, .gguf file or alias) nor a "
                           "quantization scheme; give a model path or a scheme such as int8, fp8, int4, int4-g64-asym"
                           ) from None


def parse_compare(spec: str, base_model: str | None) -> list[Variant]:
    """`none,int8,PATH,...`: `none` is the base model as it is, a path or alias is another model, any
    other word is a quantization scheme applied to the base model."""
    items = [item.strip() for item in spec.split(",")]
    if not all(items):
        raise LmforgeError(f"--compare {spec!r} has an empty item; give a comma-separated list such as none,int8,PATH")
    if len(set(items)) != len(items):
        raise LmforgeError(f"--compare {spec!r} lists the same item twice; give each model or precision once")
    variants = [Variant(item, base_model, None) if item == "none"
                else Variant(item, item, None) if _is_model(item)
                else Variant(item, base_model, item) for item in items]
    for v in variants:
        if v.quantize:
            _check_scheme(v.quantize)  # fail before the first model runs, not after
    return variants


@dataclass
class Outcome:
    variant: Variant
    scores: dict[str, float]                    # compared across variants
    counts: dict[str, int] = field(default_factory=dict)  # what was scored (tokens, examples...)


Evaluate = Callable[[object], tuple[dict[str, float], dict[str, int]]]  # LLM -> (scores, counts)


def run_variants(variants: list[Variant], evaluate: Evaluate, load: Callable[[Variant], object]) -> list[Outcome]:
    """Evaluate each variant in turn, holding one model in memory at a time."""
    outcomes = []
    for variant in variants:
        llm = load(variant)
        outcomes.append(Outcome(variant, *evaluate(llm)))
        del llm
    return outcomes


def comparison_rows(outcomes: list[Outcome]) -> list[dict]:
    """One row per (variant, metric): value and its difference from the first variant."""
    base = outcomes[0].scores
    rows = []
    for index, outcome in enumerate(outcomes):
        for metric, value in outcome.scores.items():
            ref = base.get(metric)
            delta = value - ref if index and ref is not None else None
            rel = delta / ref if delta is not None and ref else None
            rows.append({"model": outcome.variant.label, "metric": metric, "value": value,
                         "delta": delta, "delta_rel": rel})
    return rows


def _number(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) and abs(x) < 1e6 else f"{x:.4g}"


def format_table(outcomes: list[Outcome]) -> str:
    """A plain-text table (model, metric, value, delta vs the first model), then what was scored."""
    lines = [("model", "metric", "value", "delta")]
    for row in comparison_rows(outcomes):
        delta = "" if row["delta"] is None else f"{row['delta']:+.4f}"
        if row["delta_rel"] is not None:
            delta += f" ({row['delta_rel']:+.2%})"
        lines.append((row["model"], row["metric"], _number(row["value"]), delta))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    for outcome in outcomes:
        if outcome.counts:
            counts = ", ".join(f"{k} {v}" for k, v in outcome.counts.items())
            text.append(f"{outcome.variant.label}: {counts}")
    return "\n".join(text)


def check_output_path(path: str | Path) -> None:
    path = Path(path)
    if not path.parent.is_dir():
        raise LmforgeError(f"cannot write {path}: the folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise LmforgeError(f"cannot write {path}: it is a folder; give a file name")


def write_json(path: str | Path, payload: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename it: a crash leaves no half file."""
    path = Path(path)
    check_output_path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def report(task: str, settings: dict, outcomes: list[Outcome]) -> dict:
    """The JSON document of a run: task, settings, each model's scores and counts, the table rows."""
    return {"task": task, "settings": settings,
            "models": [{"label": o.variant.label, "model": o.variant.model, "quantize": o.variant.quantize,
                        "scores": o.scores, "counts": o.counts} for o in outcomes],
            "rows": comparison_rows(outcomes)}
