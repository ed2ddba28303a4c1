"""Speculative decoding for one sequence on the Engine's static KV cache.

Each step a drafter proposes up to K tokens; the target scores all of them in one forward (the
tokens it has not seen yet plus the drafts, written at consecutive cache slots by
``Engine.chunk_batch``) and keeps the longest acceptable prefix plus one token of its own:

- greedy: a draft is kept while it equals the target's argmax; the first mismatch is replaced by the
  target's argmax, and when all K are kept the target's next argmax is added. The output is the
  target's own greedy output.
- sampling (Leviathan et al. 2023, Chen et al. 2023): draft d drawn from q is kept with probability
  min(1, p(d) / q(d)); the first refused one is replaced by a sample from norm(max(0, p - q)); when
  all are kept a bonus token is drawn from p. The output has the target's distribution whatever q is.
  p and q are the processed distributions (temperature, top-k, top-p) of target and draft.

Drafters: another model with the same vocabulary (``ModelDrafter``: a smaller model, or the target
quantized to int4), or prompt lookup (``NgramDrafter``: the continuation of the latest earlier
occurrence of the context's last n-gram; no second model, q is a point mass on its proposal).

Rejected drafts stay in the cache slots past the kept prefix; the causal mask hides them and the next
step writes over them. Batch size 1 only: rows would accept different numbers of tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..errors import LmforgeError
from .engine import Engine
from .sampling import GenerationConfig, warp


@dataclass
class SpecStats:
    """Counts over every speculative generation since the last reset."""
    steps: int = 0       # target verification forwards
    drafted: int = 0     # draft tokens proposed
    accepted: int = 0    # draft tokens kept
    generated: int = 0   # tokens emitted (kept drafts + the target's own)

    @property
    def acceptance_rate(self) -> float:
        """Kept drafts / proposed drafts."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Mean tokens emitted per target forward (1 + kept drafts); plain decoding has 1."""
        return self.generated / self.steps if self.steps else 0.0

    def as_dict(self) -> dict:
        return {"steps": self.steps, "drafted": self.drafted, "accepted": self.accepted,
                "generated": self.generated, "acceptance_rate": self.acceptance_rate,
                "tokens_per_step": self.tokens_per_step}


def single_sequence_tables(total_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """key_valid and pos_table [1, total_len] of one unpadded sequence (slot i holds position i)."""
    return (torch.ones((1, total_len), dtype=torch.bool, device=device),
            torch.arange(total_len, device=device)[None])


def distribution(logits: torch.Tensor, gen: GenerationConfig) -> torch.Tensor:
    """Processed next-token probabilities [..., V] from raw logits [..., V]."""
    return warp(logits.float(), gen).softmax(dim=-1)


# ------------------------------------------------------------------------------------- drafters

class ModelDrafter:
    """Drafts with a second model through its own Engine and cache; a token is drafted from the same
    processed distribution the target samples from (or greedily)."""

    def __init__(self, engine: Engine, name: str):
        self.engine, self.name = engine, name
        self.cache = None
        self.seen = 0  # how many tokens of the sequence are in the draft cache

    def start(self, total_len: int) -> None:
        if total_len > self.engine.cfg.max_seq_len:
            raise LmforgeError(f"the draft model's context window ({self.engine.cfg.max_seq_len} tokens) is "
                               f"shorter than prompt + new tokens ({total_len}); generate fewer tokens")
        self.cache = self.engine.new_cache(1, total_len)
        self.key_valid, self.pos_table = single_sequence_tables(total_len, self.engine.device)
        self.seen = 0
        self.plan = self.engine.native_plan()  # one-token draft steps run natively where they can
        self.tokens_in = self.plan is not None and self.engine.takes_tokens(self.plan, self.cache)
        self.greedy = torch.empty(1, dtype=torch.long)  # the native step's greedy token

    def _feed(self, tokens: list[int], greedy: bool = False) -> torch.Tensor:
        """Run tokens [n] at the next slots; logits [V] after the last one. With `greedy`, a native
        one-token step also leaves its greedy token in self.greedy (and returns None for the logits)."""
        if len(tokens) == 1 and self.tokens_in:  # the step makes its own input (Engine.generate)
            slot = self.seen
            self.seen += 1
            logits = self.engine.step_tokens(self.plan, torch.tensor(tokens), slot, self.key_valid, self.pos_table,
                                             self.cache, self.greedy if greedy else None)
            return None if greedy else logits[0]
        feed = torch.tensor([tokens], device=self.engine.device)
        batch = self.engine.chunk_batch(self.seen, len(tokens), self.key_valid, self.pos_table)
        self.seen += len(tokens)
        return self.engine.forward(feed, batch, self.cache, last_only=True, plan=self.plan)[0, -1]

    def propose(self, seq: list[int], k: int, gen: GenerationConfig, generator) -> tuple[list[int], torch.Tensor | None]:
        """Up to k draft tokens after seq and their draft distributions [k, V] (None when greedy)."""
        if k == 0:
            return [], None
        greedy = not gen.do_sample
        logits = self._feed(seq[self.seen:], greedy)
        tokens, probs = [], []
        for i in range(k):
            if gen.do_sample:
                q = distribution(logits, gen)
                token = int(torch.multinomial(q, 1, generator=generator))
                probs.append(q)
            else:
                token = int(self.greedy) if logits is None else int(logits.argmax())
            tokens.append(token)
            if i + 1 < k:
                logits = self._feed([token], greedy)
        return tokens, torch.stack(probs) if probs else None

    def kept(self, n_valid: int) -> None:
        """Only the first n_valid tokens of the draft cache still match the sequence."""
        self.seen = min(self.seen, n_valid)


class NgramDrafter:
    """Prompt lookup: find the latest earlier occurrence of the sequence's last n tokens (n from
    max_ngram down to min_ngram) and propose the k tokens that followed it."""
    name = "ngram"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def start(self, total_len: int) -> None:
        pass

    def propose(self, seq: list[int], k: int, gen: GenerationConfig, generator) -> tuple[list[int], None]:
        return lookup(seq, k, self.max_ngram, self.min_ngram), None

    def kept(self, n_valid: int) -> None:
        pass


def lookup(seq: list[int], k: int, max_ngram: int, min_ngram: int) -> list[int]:
    """The up-to-k tokens following the latest earlier match of seq's last n-gram, longest n first."""
    if k == 0:
        return []
    for n in range(min(max_ngram, len(seq) - 1), min_ngram - 1, -1):
        tail = seq[-n:]
        for start in range(len(seq) - n - 1, -1, -1):  # latest first, the tail itself excluded
            if seq[start:start + n] == tail:
                return seq[start + n:start + n + k]
    return []


# ----------------------------------------------------------------------------------- acceptance

def accept_greedy(drafts: list[int], p_logits: torch.Tensor) -> tuple[int, int]:
    """(number of drafts kept, the target's own next token); p_logits [k + 1, V]."""
    best = p_logits.argmax(dim=-1).tolist()
    n = 0
    while n < len(drafts) and drafts[n] == best[n]:
        n += 1
    return n, best[n]


def accept_sampled(drafts: list[int], q: torch.Tensor | None, p: torch.Tensor,
                   generator) -> tuple[int, int]:
    """The rejection rule: (number of drafts kept, the next token). p [k + 1, V] target
    probabilities; q [k, V] draft probabilities, or None for a deterministic draft (a point mass)."""
    for i, d in enumerate(drafts):
        q_d = float(q[i, d]) if q is not None else 1.0
        u = float(torch.rand((), generator=generator, device=p.device))
        if u * q_d < float(p[i, d]):  # u < p(d) / q(d), without dividing by a zero q
            continue
        q_i = q[i] if q is not None else torch.nn.functional.one_hot(torch.tensor(d, device=p.device),
                                                                      p.shape[-1]).to(p.dtype)
        residual = (p[i] - q_i).clamp(min=0)
        if float(residual.sum()) <= 0:  # p <= q everywhere yet d refused: only rounding; use p
            residual = p[i]
        return i, int(torch.multinomial(residual, 1, generator=generator))
    n = len(drafts)
    return n, int(torch.multinomial(p[n], 1, generator=generator))


def block_early_eos(logits: torch.Tensor, produced: int, min_new: int, eos: torch.Tensor) -> torch.Tensor:
    """EOS may not be chosen for output positions below min_new; logits [n, V] are for output
    positions produced, produced + 1, ..."""
    rows = max(0, min(min_new - produced, logits.shape[0]))
    if not rows or not eos.numel():
        return logits
    early = (torch.arange(logits.shape[0], device=logits.device) < rows)[:, None]  # [n, 1]
    return logits.masked_fill(early & torch.isin(torch.arange(logits.shape[1], device=logits.device), eos), float("-inf"))


def build_speculator(llm, draft, k: int = 4) -> Speculator:
    """draft: "ngram", "self-int4" (the target RTN-quantized to int4, see self_int4_spec), a model path or
    alias, or an LLM. The draft model must share the target's vocabulary."""
    from ..api import LLM

    if draft == "ngram":
        return Speculator(llm.engine, NgramDrafter(), k)
    if draft == "self-int4":
        try:
            draft_llm = LLM(llm.source.path, dtype=llm.dtype, device=llm.device, quantize=self_int4_spec(llm.config))
        except ImportError:
            raise LmforgeError("--draft self-int4 needs int4 quantization, which this lmforge build lacks; "
                               "use --draft-model or --draft ngram") from None
    elif isinstance(draft, LLM):
        draft_llm = draft
    else:
        draft_llm = LLM(draft, dtype=llm.dtype, device=llm.device)
    check_same_vocabulary(llm, draft_llm)
    return Speculator(llm.engine, ModelDrafter(draft_llm.engine, str(draft)), k)


def self_int4_spec(cfg) -> str:
    """RTN int4 with groups of 128 input channels, or the largest of 64/32 that divides every Linear's
    input size, else one scale per output channel."""
    inputs = (cfg.dim, cfg.q_size, cfg.hidden_dim)
    group = next((g for g in (128, 64, 32) if all(n % g == 0 for n in inputs)), None)
    return f"int4-g{group}" if group else "int4-gpc"


def check_same_vocabulary(target, draft) -> None:
    """A draft must number tokens as the target does: same vocabulary size and, when both have a
    tokenizer, the same token -> id table."""
    where = f"draft model {draft.source.path}"
    if draft.config.vocab_size != target.config.vocab_size:
        raise LmforgeError(f"{where} has a vocabulary of {draft.config.vocab_size} tokens but the target has "
                           f"{target.config.vocab_size}; use a draft model with the target's tokenizer")
    tokenizers = [m._tokenizer for m in (target, draft)]
    if not any(isinstance(t, Exception) for t in tokenizers):
        a, b = (t.tk.get_vocab(with_added_tokens=True) for t in tokenizers)
        if a != b:
            differ = min(tok for tok in a.keys() | b.keys() if a.get(tok) != b.get(tok))
            raise LmforgeError(f"{where} numbers its tokens differently from the target (e.g. {differ!r}); "
                               "use a draft model with the target's tokenizer")


def summary_line(draft, k: int, stats: SpecStats, spec_s: float, plain_s: float) -> str:
    """One line for stderr: acceptance, tokens per step, and the speedup over plain decoding of the
    same prompts measured in the same run."""
    return (f"lmforge: speculative decoding (draft {draft}, k={k}): acceptance {stats.acceptance_rate:.1%} "
            f"({stats.accepted}/{stats.drafted} drafts), {stats.tokens_per_step:.2f} tokens/step, "
            f"speedup {plain_s / spec_s:.2f}x over plain decoding ({spec_s:.2f} s vs {plain_s:.2f} s, this run)")


# ------------------------------------------------------------------------------------ generation

@dataclass
class Speculator:
    """A target Engine plus a drafter; `generate` yields tokens like Engine.generate (batch size 1)."""
    target: Engine
    drafter: ModelDrafter | NgramDrafter
    k: int = 4
    stats: SpecStats = field(default_factory=SpecStats)

    def __post_init__(self):
        if self.k < 1:
            raise LmforgeError(f"--speculate-k must be at least 1 (got {self.k})")

    def verify(self, chunk: list[int], start: int, n_out: int, cache, key_valid, pos_table) -> torch.Tensor:
        """One target forward of chunk (the tokens it has not seen, then the drafts) at cache slots
        start, start + 1, ...; logits [n_out, V] of its last n_out positions."""
        eng = self.target
        batch = eng.chunk_batch(start, len(chunk), key_valid, pos_table)
        tokens = torch.tensor([chunk], device=eng.device)  # [1, n]
        return eng.forward(tokens, batch, cache, last_only=False)[0, -n_out:]

    def generate(self, prompts: list[list[int]], gen: GenerationConfig, eos_ids=frozenset(), pad_id: int = 0,
                 done: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Yield the next token as a LongTensor [1] until EOS (yielded), max_new_tokens, or the caller
        sets done[0]. Same signature as Engine.generate (pad_id is unused: one unpadded sequence)."""
        if len(prompts) != 1:
            raise LmforgeError(f"speculative decoding runs one prompt at a time (got a batch of {len(prompts)}); "
                               "use --batch-size 1 or drop --draft")
        if gen.num_beams > 1 or gen.repetition_penalty != 1.0:
            raise LmforgeError("speculative decoding supports greedy decoding and temperature/top-k/top-p "
                               "sampling, not beam search or --repetition-penalty; drop --draft or those flags")
        eng = self.target
        max_new = eng.check_lengths(prompts, gen.max_new_tokens)
        seq = list(prompts[0])
        P = len(seq)
        cache = eng.new_cache(1, P + max_new)
        key_valid, pos_table = single_sequence_tables(P + max_new, eng.device)
        self.drafter.start(P + max_new)
        generator = torch.Generator(device=eng.device).manual_seed(gen.seed) if gen.seed is not None else None
        eos = frozenset() if gen.ignore_eos else frozenset(eos_ids)
        eos_ids_t = torch.tensor(sorted(eos), dtype=torch.long, device=eng.device)
        cached = 0  # tokens of seq whose keys/values are in the target cache
        while True:
            produced = len(seq) - P
            drafts, q = self.drafter.propose(seq, min(self.k, max_new - produced - 1), gen, generator)
            logits = self.verify(seq[cached:] + drafts, cached, len(drafts) + 1, cache, key_valid, pos_table)
            logits = block_early_eos(logits, produced, gen.min_new_tokens, eos_ids_t)
            if gen.do_sample:
                n, token = accept_sampled(drafts, q, distribution(logits, gen), generator)
            else:
                n, token = accept_greedy(drafts, logits)
            cached = len(seq) + n
            new = drafts[:n] + [token]
            self.drafter.kept(cached)
            self.stats.steps += 1
            self.stats.drafted += len(drafts)
            self.stats.accepted += n
            for t in new:
                seq.append(t)
                self.stats.generated += 1
                yield torch.tensor([t], device=eng.device)
                if t in eos or len(seq) - P == max_new or (done is not None and bool(done[0])):
                    return
