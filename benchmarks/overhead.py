"""The fixed cost of a decode step (not a test): the default model's structure (30 layers, 9 query /
3 KV heads of 64, gated MLP, rope) at width 64, so that the arithmetic is negligible and what is timed
is every op's dispatch, the Python around it and the kernels' fixed costs; op by op and through the
native decode step (one call, models/native_step.py).

    python benchmarks/overhead.py [--dense] [--threads 2] [--steps 20]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from lmforge.api import LLM
from lmforge.generation.engine import Engine, Prompts
from lmforge.models.transformer import Transformer
from lmforge.quant.linear import BlockInt4Linear, decoder_linears, set_module


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", action="store_true", help="keep fp32 Linears instead of int4 blocks")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(LLM().config, dim=64, hidden_dim=64, vocab_size=256)
    model = Transformer(cfg).eval()
    model.init_buffers("cpu")
    if not args.dense:
        for name, m in decoder_linears(model):
            set_module(model, name, BlockInt4Linear(m.in_features, m.out_features))
    engine = Engine(model, torch.device("cpu"), torch.float32)
    prompt = Prompts.pad([list(range(1, 33))], 0, engine.device)
    total = 32 + 8 * args.steps + 8
    cache = engine.new_cache(1, total)
    batch, key_valid, positions = engine.prefill_batch(prompt, total)
    engine.forward(prompt.tokens, batch, cache, True)
    token = torch.tensor([[5]])
    plan = engine.native_plan()
    for name, p in (("op by op", None), ("native step", plan)):
        slot, times = 32, []
        for _ in range(8):
            start = time.perf_counter()
            for _ in range(args.steps // 2):
                engine.forward(token, engine.decode_batch(slot, key_valid, positions), cache, True, plan=p)
                slot += 1
            times.append((time.perf_counter() - start) / (args.steps // 2))
        print(f"decode step at width 64 ({'fp32' if args.dense else 'int4'} Linears, {args.threads} threads, "
              f"{name}): median {statistics.median(times) * 1e3:.2f} ms, best {min(times) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
