"""Per-phase profile of the native decode step (not a test): DecodePlan.set_profiling books each
phase's wall time (thread 0's view, barrier to barrier) over a run of steps on random activations and
a random KV cache of the given length. The numbers in RESULTS.md's phase tables come from here.

    python benchmarks/profile_step.py [--model smollm2-135m-instruct] [--batch 1] [--context 40]
                                      [--act-bits 16] [--kv-dtype float16] [--steps 200] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from lmforge.api import LLM

PHASES = ("norm+round", "qkv", "rope/cache", "attention", "merge+round", "o", "norm+round (mlp)", "gate/up",
          "gate+round", "down", "final norm+round", "head")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=40, help="cache slots visible to the step")
    ap.add_argument("--act-bits", type=int, default=16, choices=(8, 16))
    ap.add_argument("--kv-dtype", default="float16", choices=("float32", "float16"),
                    help="the KV cache's dtype (default float16, as LLM keeps it at act-bits 16 and 8)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM(args.model, act_bits=args.act_bits)
    plan = llm.engine.native_plan()
    if plan is None:
        raise SystemExit(f"no native step for this model: {llm.engine.native_plan_reason}")
    model = llm.engine.model
    attn = model.layers[0].attn
    B, L, g = args.batch, args.context, torch.Generator().manual_seed(0)
    k = torch.randn(len(model.layers), B, attn.n_kv, L + 8, attn.hd, generator=g) * 0.1
    v = torch.randn(k.shape, generator=g)
    k, v = k.to(getattr(torch, args.kv_dtype)), v.to(getattr(torch, args.kv_dtype))
    x = torch.randn(B, model.cfg.dim, generator=g) * 0.1
    cos, sin = torch.randn(B, 1, 1, attn.hd, generator=g).cos(), torch.randn(B, 1, 1, attn.hd, generator=g).sin()
    mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
    for _ in range(20):
        plan.step(x, cos, sin, k, v, L - 1, mask)
    plan.set_profiling(True)
    plan.phase_seconds()  # reset
    start = time.perf_counter()
    for _ in range(args.steps):
        plan.step(x, cos, sin, k, v, L - 1, mask)
    step = (time.perf_counter() - start) / args.steps
    phases = [s / args.steps for s in plan.phase_seconds()]
    print(f"batch {B}, {L} slots, act-bits {args.act_bits}, {args.kv_dtype} KV cache: step {step * 1e3:.2f} ms")
    for name, s in zip(PHASES, phases):
        print(f"  {name:18s} {s * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
