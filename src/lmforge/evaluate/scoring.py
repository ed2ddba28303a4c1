"""Log-likelihood of continuations, batched: the one scoring routine behind LAMBADA and lm-eval.

A *scorer* is any function from token ids [B, S] to fp32 logits [B, S, V] (``LLM.score``); tests
pass a fake one with known probabilities.
"""
from __future__ import annotations

import sys
from typing import Callable, Iterable, Sequence

import torch

Scorer = Callable[[torch.Tensor], torch.Tensor]


def progress(items: Iterable, total: int, desc: str, disable: bool = False):
    """`items` with a tqdm bar on stderr when tqdm is installed (it comes with lm-eval/transformers)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=desc, disable=disable or not sys.stderr.isatty(), leave=False)


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval tokenizes them: trailing spaces of the context
    move to the continuation, the whole text is encoded once and split after the context's tokens
    (so a merge across the boundary stays in the continuation)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = encode(context + continuation)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids):]


def continuation_logprobs(score: Scorer, pairs: Sequence[tuple[list[int], list[int]]], max_len: int,
                          batch_size: int = 8, desc: str = "scoring", disable_progress: bool = False
                          ) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids): (sum of the continuation's log-probabilities, whether
    greedy decoding would produce exactly the continuation). Inputs longer than `max_len` lose tokens
    on the left (lm-eval's rule). Batches hold sequences of similar length, right-padded: with a
    causal model the padding cannot change the logits of the real tokens."""
    for ctx, cont in pairs:
        if not ctx or not cont:
            raise ValueError("continuation_logprobs needs a non-empty context and continuation")
    inputs = [(ctx + cont)[-(max_len + 1):][:-1] for ctx, cont in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -len(inputs[i]))  # longest first: memory peaks early
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    bar = progress(batches, len(batches), desc, disable_progress)
    for batch in bar:
        width = len(inputs[batch[0]])
        tokens = torch.zeros((len(batch), width), dtype=torch.long)  # [B, S], right-padded
        for row, i in enumerate(batch):
            tokens[row, :len(inputs[i])] = torch.tensor(inputs[i])
        logits = score(tokens)  # [B, S, V]
        for row, i in enumerate(batch):
            cont = torch.tensor(pairs[i][1], device=logits.device)
            end = len(inputs[i])
            logprobs = torch.log_softmax(logits[row, end - len(cont):end].float(), dim=-1)  # [C, V]
            total = logprobs.gather(1, cont[:, None]).sum().item()
            results[i] = (total, bool((logprobs.argmax(-1) == cont).all()))
    return results
