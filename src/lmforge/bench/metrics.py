"""Every benchmark metric, defined once (docs/benchmarking.md explains each one in words).

A timed run is a :class:`Timing`: the clock reading just before generation starts and the clock
reading after each generated token became available on the host (the tokens of all rows of the
batch come together, one step at a time). Everything else is arithmetic on timings, done here with
plain floats so it can be checked on synthetic numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Timing:
    """One timed generate call, in seconds of ``time.perf_counter``."""
    start: float                      # just before the engine is asked for the first token
    end: float                        # when the last token was available
    token_times: tuple[float, ...]    # when step k's tokens were available; empty if not streamed (beams)

    @property
    def streamed(self) -> bool:
        return bool(self.token_times)


# ------------------------------------------------------------------------------ statistics

def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default method)."""
    if not samples:
        raise ValueError("percentile of no samples")
    xs = sorted(samples)
    rank = (len(xs) - 1) * q / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def summary(samples: Sequence[float]) -> dict[str, float] | None:
    """Mean, P50, P90, P99 of a sample list; None when there are no samples."""
    if not samples:
        return None
    return {"mean": sum(samples) / len(samples), "p50": percentile(samples, 50),
            "p90": percentile(samples, 90), "p99": percentile(samples, 99)}


# ----------------------------------------------------------------------------- one timing

def ttft(t: Timing) -> float | None:
    """Time to first token: prefill of the whole prompt plus selecting the first token."""
    return t.token_times[0] - t.start if t.streamed else None


def next_token_latencies(t: Timing) -> list[float]:
    """Gaps between consecutive steps; the first token is excluded (it is TTFT). N tokens give N-1 gaps."""
    tt = t.token_times
    return [b - a for a, b in zip(tt, tt[1:])]


def e2e_latency(t: Timing) -> float:
    """Start of generation to the last token."""
    return t.end - t.start


# ------------------------------------------------------------------------------ throughput

def prefill_tokens_per_s(batch_size: int, prompt_tokens: int, ttft_s: float) -> float:
    """Prompt tokens of the whole batch processed per second of TTFT."""
    return batch_size * prompt_tokens / ttft_s


def decode_tokens_per_s(tpot_s: float) -> float:
    """Tokens per second that one sequence receives after its first token (1 / TPOT)."""
    return 1.0 / tpot_s


def aggregate_tokens_per_s(per_sequence: float, batch_size: int) -> float:
    """Tokens per second over the whole batch: every step yields one token per sequence."""
    return per_sequence * batch_size


# ------------------------------------------------------------------------------- bandwidth

def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, element_size: int) -> int:
    """Bytes of keys and values that one cached token occupies over all layers."""
    return 2 * n_layers * n_kv_heads * head_dim * element_size


def mean_decode_context(context_tokens: int, new_tokens: int) -> float:
    """Mean number of cached tokens a decode step attends over.

    Decode step k (k = 1 .. N-1, producing token k+1) attends over context + k positions, so the mean
    over the N-1 decode steps is context + N/2."""
    return context_tokens + new_tokens / 2


def decode_step_bytes(weight_bytes: int, kv_token_bytes: int, batch_size: int, mean_context: float) -> float:
    """Bytes one decode step must read: every weight once, plus each sequence's KV cache."""
    return weight_bytes + kv_token_bytes * batch_size * mean_context


def achieved_bandwidth(step_bytes: float, tpot_s: float) -> float:
    """Bytes per second: the bytes of one decode step times decode steps per second."""
    return step_bytes / tpot_s


def percent_of(value: float | None, limit: float | None) -> float | None:
    if value is None or not limit:
        return None
    return 100.0 * value / limit


# ------------------------------------------------------------------------------ one case

def case_metrics(timings: Sequence[Timing], batch_size: int, context_tokens: int, new_tokens: int,
                 weight_bytes: int, kv_token_bytes: int, peak_bandwidth: float | None) -> dict:
    """All metrics of one benchmark case from its measured (post-warm-up) timings.

    Next-token gaps of all iterations are pooled, so TPOT's mean is total decode time over total
    decode steps. Throughputs derive from the means (ratio of sums, never a mean of ratios)."""
    streamed = all(t.streamed for t in timings)
    ttfts = [ttft(t) for t in timings] if streamed else []
    gaps = [g for t in timings for g in next_token_latencies(t)] if streamed else []
    out = {"ttft_s": summary(ttfts), "tpot_s": summary(gaps), "e2e_latency_s": summary([e2e_latency(t) for t in timings]),
           "prefill_tokens_per_s": None, "decode_tokens_per_s_per_sequence": None,
           "decode_tokens_per_s_aggregate": None, "decode_step_bytes": None, "bandwidth_bytes_per_s": None,
           "bandwidth_percent_of_peak": None}
    if ttfts:
        out["prefill_tokens_per_s"] = prefill_tokens_per_s(batch_size, context_tokens, out["ttft_s"]["mean"])
    if gaps:
        tpot = out["tpot_s"]["mean"]
        per_seq = decode_tokens_per_s(tpot)
        step = decode_step_bytes(weight_bytes, kv_token_bytes, batch_size, mean_decode_context(context_tokens, new_tokens))
        out.update(decode_tokens_per_s_per_sequence=per_seq,
                   decode_tokens_per_s_aggregate=aggregate_tokens_per_s(per_seq, batch_size),
                   decode_step_bytes=step, bandwidth_bytes_per_s=achieved_bandwidth(step, tpot))
        out["bandwidth_percent_of_peak"] = percent_of(out["bandwidth_bytes_per_s"], peak_bandwidth)
    return out


def speedup(ours: dict, theirs: dict) -> dict[str, float | None]:
    """How many times faster lmforge is than a baseline on the same case (> 1: lmforge is faster)."""
    def ratio(a, b):
        return a / b if a and b else None

    def mean(m, key):
        return m[key]["mean"] if m.get(key) else None

    return {"decode": ratio(ours["decode_tokens_per_s_aggregate"], theirs["decode_tokens_per_s_aggregate"]),
            "ttft": ratio(mean(theirs, "ttft_s"), mean(ours, "ttft_s")),
            "e2e": ratio(mean(theirs, "e2e_latency_s"), mean(ours, "e2e_latency_s"))}


def weight_bytes(model, skip_embeddings: bool = False) -> int:
    """Bytes of a model's weights: every parameter and persistent buffer (quantized weights and their
    scales included), each storage once. With skip_embeddings, embedding tables are left out: a decode
    step only gathers a few of their rows (a head tied to the embedding is still counted, as the head)."""
    from torch import nn

    from ..quant.linear import BlockEmbedding, TiedHead

    skipped: set[int] = set()  # ids of embedding modules and of the modules inside them
    if skip_embeddings:
        tied = {id(m.table) for m in model.modules() if isinstance(m, TiedHead)}  # read in full, as the head
        for module in model.modules():
            if isinstance(module, (nn.Embedding, BlockEmbedding)):
                skipped |= {id(m) for m in module.modules() if id(m) not in tied}
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if id(module) in skipped:
            continue
        tensors = list(module.parameters(recurse=False))
        tensors += [b for name, b in module.named_buffers(recurse=False)
                    if name not in module._non_persistent_buffers_set]
        for t in tensors:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def decode_weight_bytes(model) -> int:
    """Bytes of the weights one decode step must read (see weight_bytes)."""
    return weight_bytes(model, skip_embeddings=True)
