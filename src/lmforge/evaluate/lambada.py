"""LAMBADA (OpenAI version) last-word prediction, defined as lm-eval's `lambada_openai` task.

Each example's text is split at its last space: the context is everything before it, the target is
" " + the last word. An example is correct when greedy decoding would produce exactly the target's
tokens (lm-eval's `is_greedy`); perplexity is exp(-mean over examples of the target's total
log-probability), lm-eval's `perplexity` aggregation.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import LmforgeError
from .scoring import continuation_logprobs, encode_pair


@dataclass(frozen=True)
class LambadaResult:
    correct: int
    examples: int
    target_logprob: float  # sum over examples of the target's log-probability (nats)
    target_tokens: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples

    @property
    def perplexity(self) -> float:
        return math.exp(-self.target_logprob / self.examples)

    def scores(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "perplexity": self.perplexity}

    def counts(self) -> dict[str, int]:
        return {"examples": self.examples, "correct": self.correct, "target_tokens": self.target_tokens}


def split_last_word(text: str) -> tuple[str, str]:
    """(context, target): lm-eval's `text.split(' ')[:-1]|join(' ')` and `' ' + text.split(' ')[-1]`."""
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def read_lambada(path: str | Path, limit: int | None = None) -> list[str]:
    """The "text" field of each line of a LAMBADA jsonl file (the first `limit` lines)."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"no such data file: {path}; give the LAMBADA jsonl file "
                           '(one {"text": ...} object per line) with --data')
    if limit is not None and limit < 1:
        raise LmforgeError(f"--limit must be at least 1 (got {limit})")
    texts: list[str] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if limit is not None and len(texts) == limit:
                break
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise LmforgeError(f'{path}:{number}: not a JSON object with a "text" field; '
                                   'LAMBADA files have one {"text": ...} object per line') from None
            if " " not in text.strip():
                raise LmforgeError(f"{path}:{number}: the text has no space, so there is no last word to predict")
            texts.append(text)
    if not texts:
        raise LmforgeError(f"{path} is empty; give a LAMBADA jsonl file with at least one example")
    return texts


def lambada(llm, texts: list[str], batch_size: int = 8) -> LambadaResult:
    """Last-word accuracy and target perplexity of `llm` (an lmforge.LLM) on LAMBADA texts."""
    encode = llm.tokenizer.encode
    pairs = [encode_pair(encode, *split_last_word(t)) for t in texts]
    scores = continuation_logprobs(llm.score, pairs, llm.config.max_seq_len, batch_size, desc="lambada")
    return LambadaResult(correct=sum(greedy for _, greedy in scores), examples=len(texts),
                         target_logprob=sum(lp for lp, _ in scores),
                         target_tokens=sum(len(cont) for _, cont in pairs))
