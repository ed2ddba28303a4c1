"""Sliding-window perplexity: the strided method of the transformers perplexity guide.

The text is tokenized once and cut into windows of `context_len` tokens that start `stride` tokens
apart. Each window scores only the tokens the previous window did not score, so every token after
the first is predicted exactly once, with between `context_len - stride` and `context_len - 1`
tokens of context (with `stride == context_len` the windows do not overlap and the first token of
each window, which has no context inside it, is not scored, as in the guide).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import LmforgeError
from .scoring import Scorer, progress


@dataclass(frozen=True)
class Window:
    begin: int         # first token fed to the model
    end: int           # one past the last token fed
    first_target: int  # tokens [first_target, end) are scored by this window


@dataclass(frozen=True)
class PerplexityResult:
    nll: float     # total negative log-likelihood of the scored tokens, in nats
    tokens: int    # tokens scored
    bytes: int     # UTF-8 bytes of the text those tokens cover
    windows: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes

    def scores(self) -> dict[str, float]:
        return {"perplexity": self.perplexity, "nll_per_token": self.nll / self.tokens,
                "bits_per_byte": self.bits_per_byte}

    def counts(self) -> dict[str, int]:
        return {"tokens": self.tokens, "bytes": self.bytes, "windows": self.windows}


def strided_windows(n_tokens: int, context_len: int, stride: int) -> list[Window]:
    """The windows over n_tokens tokens; together they score tokens 1..n_tokens-1 once each."""
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context_len, n_tokens)
        windows.append(Window(begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def strided_nll(score: Scorer, ids: list[int], context_len: int, stride: int, batch_size: int = 1,
                disable_progress: bool = False) -> tuple[float, int, int]:
    """(total NLL in nats, tokens scored, windows) of ids under the strided method."""
    windows = strided_windows(len(ids), context_len, stride)
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    nll, scored = 0.0, 0
    for batch in progress(batches, len(batches), "perplexity", disable_progress):
        tokens = torch.zeros((len(batch), context_len), dtype=torch.long)  # [B, L], right-padded
        for row, w in enumerate(batch):
            tokens[row, :w.end - w.begin] = torch.tensor(ids[w.begin:w.end])
        width = max(w.end - w.begin for w in batch)
        logits = score(tokens[:, :width])  # [B, L, V]
        for row, w in enumerate(batch):
            # the logits at position p predict token p + 1
            pred = logits[row, w.first_target - w.begin - 1:w.end - w.begin - 1].float()  # [T, V]
            targets = torch.tensor(ids[w.first_target:w.end], device=pred.device)  # [T]
            nll -= torch.log_softmax(pred, dim=-1).gather(1, targets[:, None]).sum().item()
            scored += len(targets)
    return nll, scored, len(windows)


def scored_bytes(decode, ids: list[int], first: int) -> int:
    """UTF-8 bytes of the text covered by ids[first:] (decoding prefixes keeps SentencePiece's
    leading-space rule and skipped special tokens consistent)."""
    return len(decode(ids).encode("utf-8")) - len(decode(ids[:first]).encode("utf-8"))


def check_windows(context_len: int | None, stride: int | None, max_seq_len: int | None = None) -> None:
    """Validate the window settings given so far (None: not known yet)."""
    if context_len is not None and context_len < 2:
        raise LmforgeError(f"--context-len must be at least 2 tokens (got {context_len})")
    if context_len is not None and max_seq_len is not None and context_len > max_seq_len:
        raise LmforgeError(f"--context-len {context_len} is longer than the model's context window "
                           f"({max_seq_len}); use at most {max_seq_len}")
    if stride is not None and stride < 1:
        raise LmforgeError(f"--stride must be at least 1 (got {stride})")
    if stride is not None and context_len is not None and stride > context_len:
        raise LmforgeError(f"--stride ({stride}) is larger than --context-len ({context_len}); "
                           "windows that far apart would skip tokens")


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"no such data file: {path}; give a UTF-8 text file with --data")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LmforgeError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None
    if not text.strip():
        raise LmforgeError(f"{path} is empty; perplexity needs some text to score")
    return text


def perplexity(llm, text: str, context_len: int | None = None, stride: int | None = None,
               max_tokens: int | None = None, batch_size: int = 1) -> PerplexityResult:
    """Perplexity of `text` under `llm` (an lmforge.LLM). context_len defaults to the model's context
    window capped at 1024 tokens, stride to half of it; max_tokens keeps the first N tokens."""
    context_len = context_len or min(1024, llm.config.max_seq_len)
    stride = stride or max(1, context_len // 2)
    check_windows(context_len, stride, llm.config.max_seq_len)
    if max_tokens is not None and max_tokens < 2:
        raise LmforgeError(f"--max-tokens must be at least 2 (got {max_tokens})")
    ids = llm.tokenizer.encode(text)[:max_tokens]
    if len(ids) < 2:
        raise LmforgeError("the text is a single token; perplexity needs at least two tokens")
    nll, tokens, windows = strided_nll(llm.score, ids, context_len, stride, batch_size)
    return PerplexityResult(nll, tokens, scored_bytes(llm.tokenizer.decode, ids, 1), windows)
