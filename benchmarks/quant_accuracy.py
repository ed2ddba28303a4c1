"""Perplexity of quantized SmolLM2-135M against its own dequantized fp32 weights (docs/quantization.md).

    python benchmarks/quant_accuracy.py --out /tmp/quant-accuracy   # ~30 min on 2 cores

Each row: quantize with `lmforge quantize`'s code path, write the folder, load it back by path,
score the first 8192 tokens of WikiText-2 (raw, test) in 1024-token windows without overlap.
Calibration: the first samples of WikiText-2 (validation split), never the test text.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lmforge import LLM
from lmforge.evaluate.perplexity import perplexity
from lmforge.quant import make_spec, quantize_to_folder

SHARED = Path(__file__).resolve().parents[2] / "shared"
EVAL = SHARED / "data/wikitext-2-raw/wikitext-2-raw-v1.test.joined.txt"
CALIB = SHARED / "data/wikitext-2/valid.txt"

ROWS = [  # (label, make_spec kwargs); SmolLM2's 576-wide layers take groups of 32 or 64, not 128
    ("int8 RTN", dict(method="rtn", bits=8)),
    ("fp8 e4m3", dict(method="fp8")),
    ("W8A8 SmoothQuant a=0.5", dict(method="smoothquant", alpha=0.5)),
    ("int4 g64 RTN", dict(method="rtn", bits=4, group_size=64)),
    ("int4 g64 GPTQ", dict(method="gptq", bits=4, group_size=64)),
    ("int4 g64 AWQ", dict(method="awq", bits=4, group_size=64)),
    ("int4 g64 asym RTN", dict(method="rtn", bits=4, group_size=64, scheme="asym")),
    ("int4 g64 asym GPTQ act-order", dict(method="gptq", bits=4, group_size=64, scheme="asym", act_order=True)),
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", required=True)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--only", default=None, help="comma-separated row labels")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = EVAL.read_text(encoding="utf-8")

    def measure(label, path, seconds):
        llm = LLM(path)
        r = perplexity(llm, text, context_len=1024, stride=1024, max_tokens=8192)
        size = sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) if Path(path).is_dir() else None
        row = {"label": label, "perplexity": r.perplexity, "tokens": r.tokens, "size_bytes": size,
               "quantize_seconds": seconds}
        print(json.dumps(row), flush=True)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    rows = ROWS if not args.only else [r for r in ROWS if r[0] in args.only.split(",")]
    if not args.only:
        base = LLM(args.model)  # the GGUF dequantized to fp32: the reference
        from lmforge.io.native import save_native
        save_native(base.model, base._tokenizer, out / "fp32", None, source=args.model, force=True)
        measure("fp32 (dequantized GGUF)", out / "fp32", 0.0)
    for label, kw in rows:
        spec = make_spec(**kw)
        folder = out / label.replace(" ", "-").replace("=", "")
        start = time.monotonic()
        quantize_to_folder(args.model, spec, folder, calib_data=CALIB, calib_samples=args.calib_samples,
                           calib_seq_len=args.calib_seq_len, force=True, progress=False)
        measure(label, folder, time.monotonic() - start)
    print(table(out / "results.jsonl"))


def table(results: Path) -> str:
    """The markdown table of docs/quantization.md from results.jsonl (the first row is the reference)."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    base = rows[0]["perplexity"]
    lines = ["| method | perplexity | change | size on disk (model.safetensors) |", "|---|---:|---:|---:|"]
    for r in rows:
        change = (r["perplexity"] / base - 1) * 100
        lines.append(f"| {r['label']} | {r['perplexity']:.3f} | {change:+.2f}% | {r['size_bytes'] / 1e6:.1f} MB |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
