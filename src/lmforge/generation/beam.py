"""Beam search for one prompt on the Engine's static KV cache, decided exactly as transformers'
`_beam_search` decides it (decoder-only, batch of one):

- each step keeps the top K = max(2, 1 + #eos) * B candidates over beams x vocab of
  log_softmax(logits) (then repetition penalty and min_new_tokens) plus the beam's running score;
- the best B candidates that did not end (EOS, or the last step) are the next running beams;
- of the first B candidates, those that ended join the pool of B finished hypotheses with score
  sum_logprob / n_generated ** length_penalty (n_generated counts the EOS);
- the search stops at max_new_tokens, when early_stopping is True and the pool is full, or when the
  best running beam can no longer beat the worst finished one (for early_stopping="never" with a
  positive length_penalty, judged at the longest possible length).

transformers marks "never pick this" by adding -1e9 to a score; the same arithmetic is used here so
that scores, ties and the stopping test come out the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .engine import Engine, Prompts
from .sampling import GenerationConfig, apply_repetition_penalty

NEG = -1.0e9


@dataclass
class Finished:
    """The pool of the B best finished hypotheses, best first; places not yet filled are not `real`."""
    tokens: torch.Tensor   # [B, N] generated ids
    lengths: torch.Tensor  # [B]
    scores: torch.Tensor   # [B] length-normalised
    real: torch.Tensor     # [B] bool

    @classmethod
    def empty(cls, num_beams: int, max_new: int, pad_id: int, device) -> "Finished":
        return cls(torch.full((num_beams, max_new), pad_id, dtype=torch.long, device=device),
                   torch.zeros(num_beams, dtype=torch.long, device=device),
                   torch.full((num_beams,), NEG, device=device),
                   torch.zeros(num_beams, dtype=torch.bool, device=device))

    def best(self) -> list[int]:
        return self.tokens[0, : int(self.lengths[0])].tolist()


def step_log_probs(logits: torch.Tensor, seen: torch.Tensor | None, step: int, gen: GenerationConfig,
                   eos: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> processed log-probabilities [B, V]; seen [B, V]: tokens in each beam so far."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    if seen is not None:
        log_probs = apply_repetition_penalty(log_probs, seen, gen.repetition_penalty)
    if step < gen.min_new_tokens and eos.numel():
        log_probs = log_probs.index_fill(1, eos, float("-inf"))
    return log_probs


def top_candidates(log_probs: torch.Tensor, beam_scores: torch.Tensor, k: int):
    """The k best (beam, token) continuations: accumulated scores [k], source beams [k], tokens [k]."""
    V = log_probs.shape[-1]
    scores, flat = torch.topk((log_probs + beam_scores[:, None]).reshape(-1), k)  # over [B * V]
    return scores, flat // V, flat % V


def update_finished(pool: Finished, cand_tokens: torch.Tensor, cand_scores: torch.Tensor, ended: torch.Tensor,
                    n_generated: int, gen: GenerationConfig, improvable: bool) -> Finished:
    """Merge the candidates [K] that just ended into the pool; only the first B (by accumulated score)
    may enter, and none once early stopping has closed the pool or no improvement is possible."""
    B = pool.scores.numel()
    entering = ended.clone()
    entering[B:] = False
    scores = cand_scores / (n_generated ** gen.length_penalty)
    scores = scores + float(gen.early_stopping is True and bool(pool.real.all())) * NEG
    scores = scores + float(not improvable) * NEG
    scores = scores + (~entering).float() * NEG
    merged_scores = torch.cat([pool.scores, scores])
    keep = torch.topk(merged_scores, B).indices
    lengths = torch.full_like(cand_scores, n_generated, dtype=torch.long)
    return Finished(torch.cat([pool.tokens, cand_tokens])[keep], torch.cat([pool.lengths, lengths])[keep],
                    merged_scores[keep], torch.cat([pool.real, entering])[keep])


def may_improve(best_running: torch.Tensor, pool: Finished, n_generated: int, max_new: int,
                gen: GenerationConfig) -> bool:
    """Could the best running beam still beat the worst finished hypothesis (transformers' heuristic)?"""
    lp = gen.length_penalty
    length = max_new if gen.early_stopping == "never" and lp > 0.0 else n_generated
    worst = torch.where(pool.real, pool.scores.min(), torch.full_like(pool.scores, NEG))
    return bool((best_running / (length ** lp) > worst).any())


@torch.inference_mode()
def beam_search(engine: Engine, prompt: list[int], gen: GenerationConfig, eos_ids: frozenset[int],
                pad_id: int) -> list[int]:
    """Generated ids of the best hypothesis for `prompt`, EOS included when it ended on one."""
    B = gen.num_beams
    max_new = engine.check_lengths([prompt], gen.max_new_tokens)
    device = engine.device
    eos = torch.tensor(sorted(eos_ids if not gen.ignore_eos else ()), dtype=torch.long, device=device)
    k = max(2, 1 + eos.numel()) * B
    P = len(prompt)

    # prefill the prompt once into row 0, then copy it out to every beam
    prompt_in = Prompts.pad([prompt], pad_id, device)
    cache = engine.new_cache(B, P + max_new)
    batch, key_valid, pos_table = engine.prefill_batch(prompt_in, P + max_new)
    logits = engine.forward(prompt_in.tokens, batch, cache.first_rows(1), last_only=True)[:, -1]  # [1, V]
    cache.reorder(torch.zeros(B, dtype=torch.long, device=device), P)
    logits = logits.expand(B, -1)
    key_valid, pos_table = key_valid.expand(B, -1), pos_table.expand(B, -1)

    seen = None
    if gen.repetition_penalty != 1.0:
        seen = torch.zeros((B, engine.cfg.vocab_size), dtype=torch.bool, device=device)
        seen[:, torch.tensor(prompt, device=device)] = True
    tokens = torch.full((B, max_new), pad_id, dtype=torch.long, device=device)  # running beams' ids
    beam_scores = torch.full((B,), NEG, device=device)
    beam_scores[0] = 0.0  # all rows start identical: only the first one proposes continuations
    pool = Finished.empty(B, max_new, pad_id, device)
    improvable = True
    rows = torch.arange(B, device=device)
    plan = engine.native_plan()
    tokens_in = plan is not None and engine.takes_tokens(plan, cache)  # the step makes its own input

    for step in range(max_new):
        log_probs = step_log_probs(logits, seen, step, gen, eos)
        cand_scores, cand_beams, cand_ids = top_candidates(log_probs, beam_scores, k)
        cand_tokens = tokens[cand_beams]
        cand_tokens[:, step] = cand_ids
        ended = torch.isin(cand_ids, eos) | (step + 1 == max_new)  # [K]

        running_scores = cand_scores + ended.float() * NEG
        keep = torch.topk(running_scores, B).indices
        pool = update_finished(pool, cand_tokens, cand_scores, ended, step + 1, gen, improvable)
        tokens, beam_scores, parents = cand_tokens[keep], running_scores[keep], cand_beams[keep]

        improvable = improvable and may_improve(beam_scores[0], pool, step + 1, max_new, gen)
        pool_closed = gen.early_stopping is True and bool(pool.real.all())
        if step + 1 == max_new or not improvable or pool_closed:
            break
        cache.reorder(parents, P + step)
        if seen is not None:
            seen = seen[parents]
            seen[rows, tokens[:, step]] = True
        if tokens_in:
            logits = engine.step_tokens(plan, tokens[:, step], P + step, key_valid, pos_table, cache)
            continue
        feed = tokens[:, step: step + 1]  # [B, 1]
        logits = engine.forward(feed, engine.decode_batch(P + step, key_valid, pos_table), cache,
                                last_only=True, plan=plan)[:, -1]
    return pool.best()
