"""`lmforge bench --prompt-file/--dataset`: generation over real prompts of varying lengths, in batches,
once in input order and once with length buckets (--bucket-size), with the padding each one wastes."""
from __future__ import annotations

import time

from ..prompts import padding_waste, plan_batches


def timed_pass(llm, ids: list[list[int]], gen, batch_size: int, bucket_size: int | None) -> dict:
    """Generate for every prompt once with one batch plan; wall time, tokens, padding."""
    lengths = [len(i) for i in ids]
    batches = plan_batches(lengths, batch_size, bucket_size)
    new_tokens = 0
    start = time.perf_counter()
    for b in batches:
        outs = llm.generate_ids([ids[i] for i in b.indices], gen, pad_multiple=bucket_size or 1)
        new_tokens += sum(len(o) for o in outs)
    elapsed = time.perf_counter() - start
    return {"bucket_size": bucket_size, "batch_size": batch_size, "batches": len(batches),
            "distinct_padded_lengths": len({b.padded_len for b in batches}),
            "padding_waste": padding_waste(lengths, batches), "prompt_tokens": sum(lengths),
            "new_tokens": new_tokens, "seconds": elapsed, "new_tokens_per_s": new_tokens / elapsed}


def run_dataset_bench(llm, prompts: list[str], gen, batch_size: int, bucket_size: int | None,
                      progress) -> list[dict]:
    """A warm-up batch, then one timed pass in input order and, with bucket_size, one bucketed pass."""
    ids = [llm.tokenizer.encode(p) for p in prompts]  # tokenization stays outside the timed region
    llm.generate_ids(ids[:batch_size], gen)
    plans = [None] + ([bucket_size] if bucket_size else [])
    results = []
    for bucket in plans:
        progress(f"{len(ids)} prompts in batches of {batch_size}, "
                 + (f"length buckets of {bucket} tokens" if bucket else "input order"))
        results.append(timed_pass(llm, ids, gen, batch_size, bucket))
    return results


def markdown(results: list[dict]) -> str:
    cols = ("plan", "batches", "distinct lengths", "padding waste", "new tokens", "s", "new tok/s")
    rows = [cols, ["---"] * len(cols)]
    for r in results:
        rows.append([f"buckets of {r['bucket_size']}" if r["bucket_size"] else "input order", str(r["batches"]),
                     str(r["distinct_padded_lengths"]), f"{r['padding_waste']:.1%}", str(r["new_tokens"]),
                     f"{r['seconds']:.2f}", f"{r['new_tokens_per_s']:.1f}"])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"
