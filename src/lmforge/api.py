"""The public Python API: ``from lmforge import LLM``."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from .generation.engine import Engine
from .generation.sampling import GenerationConfig
from .loader import load, parse_device, parse_dtype
from .tokenizer import IncrementalDecoder


class LLM:
    """A loaded model with its tokenizer and engine.

    >>> llm = LLM("smollm2-135m-instruct")
    >>> llm.chat([{"role": "user", "content": "What is the capital of France?"}])
    """

    def __init__(self, model: str | Path | None = None, dtype: str | torch.dtype = "float32",
                 device: str | torch.device = "cpu", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.dtype, self.device = parse_dtype(dtype), parse_device(device)
        self.model, self._tokenizer, self.source = load(model, self.dtype, self.device)
        self.config = self.model.cfg
        self.engine = Engine(self.model, self.device, self.dtype)

    @property
    def tokenizer(self):
        """The model's tokenizer; a folder without one can still score and generate token ids."""
        if isinstance(self._tokenizer, Exception):
            raise self._tokenizer
        return self._tokenizer

    # ------------------------------------------------------------------------------------ helpers
    def _gen(self, **kw) -> GenerationConfig:
        stop = kw.pop("stop", None)
        if isinstance(stop, str):
            stop = (stop,)
        return GenerationConfig(stop=tuple(stop or ()), **{k: v for k, v in kw.items() if v is not None})

    def _pad_id(self) -> int:
        pad = self.config.pad_token_id
        vocab = self.config.vocab_size
        if pad is None or not 0 <= pad < vocab:
            pad = next((e for e in self._eos(GenerationConfig(), chat=False) if 0 <= e < vocab), 0)
        return pad

    def _eos(self, gen: GenerationConfig, chat: bool) -> frozenset[int]:
        if gen.eos_token_ids is not None:
            return frozenset(gen.eos_token_ids)
        if isinstance(self._tokenizer, Exception):
            return frozenset(self.config.eos_token_ids)
        base = self.tokenizer.stop_ids if chat else self.tokenizer.eos_ids
        return frozenset(base | set(self.config.eos_token_ids))

    def generate_ids(self, prompts: list[list[int]], gen: GenerationConfig, chat: bool = False) -> list[list[int]]:
        """Token ids in, generated token ids out (EOS included when reached; a row ends early when
        one of gen.stop appears in its text)."""
        eos, pad = self._eos(gen, chat), self._pad_id()
        if gen.num_beams > 1:
            from .generation.beam import beam_search
            return [beam_search(self.engine, p, gen, eos, pad) for p in prompts]
        out: list[list[int]] = [[] for _ in prompts]
        done = torch.zeros(len(prompts), dtype=torch.bool, device=self.device)
        tail = max((len(s) for s in gen.stop), default=0) + 4
        for step in self.engine.generate(prompts, gen, eos, pad, done=done):
            for i, t in enumerate(step.tolist()):
                if t < 0:
                    continue
                out[i].append(t)
                if gen.stop and _cut_at_stop(self.tokenizer.decode(out[i][-tail:]), gen.stop)[1]:
                    done[i] = True
        return out

    def _finish(self, ids: list[int], gen: GenerationConfig) -> str:
        return _cut_at_stop(self.tokenizer.decode(ids), gen.stop)[0]

    # ------------------------------------------------------------------------------------- public
    def generate(self, prompts: str | list[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, num_beams: int = 1,
                 seed: int | None = None, stop: str | list[str] | None = None, **kw) -> list[str]:
        """Continue each prompt (raw text, no chat template). Returns the generated text only."""
        if isinstance(prompts, str):
            prompts = [prompts]
        gen = self._gen(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        num_beams=num_beams, seed=seed, stop=stop, **kw)
        ids = [self.tokenizer.encode(p) for p in prompts]
        return [self._finish(o, gen) for o in self.generate_ids(ids, gen)]

    def stream(self, prompt: str, max_new_tokens: int = 64, **kw) -> Iterator[str]:
        """Yield text pieces of the continuation of `prompt` as they are generated."""
        gen = self._gen(max_new_tokens=max_new_tokens, **kw)
        return self._stream_ids(self.tokenizer.encode(prompt), gen, chat=False)

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256, **kw) -> str:
        """Apply the model's chat template and return the assistant's reply."""
        return "".join(self.chat_stream(messages, max_new_tokens=max_new_tokens, **kw))

    def chat_stream(self, messages: list[dict[str, str]], max_new_tokens: int = 256, **kw) -> Iterator[str]:
        gen = self._gen(max_new_tokens=max_new_tokens, **kw)
        return self._stream_ids(self.tokenizer.encode_chat(messages), gen, chat=True)

    def score(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] (fp32) for every position of token_ids [B, S]."""
        if token_ids.dim() == 1:
            token_ids = token_ids[None]
        return self.engine.score(token_ids.long())

    # ---------------------------------------------------------------------------------- streaming
    def _stream_ids(self, ids: list[int], gen: GenerationConfig, chat: bool) -> Iterator[str]:
        if gen.num_beams > 1:
            yield self._finish(self.generate_ids([ids], gen, chat=chat)[0], gen)
            return
        decoder = IncrementalDecoder(self.tokenizer)
        eos = self._eos(gen, chat)
        text, emitted = "", 0
        hold = max((len(s) for s in gen.stop), default=0)
        for step in self.engine.generate([ids], gen, eos, self._pad_id()):
            token = int(step[0])
            if token < 0 or token in eos:
                break
            text += decoder.push(token)
            cut, hit = _cut_at_stop(text, gen.stop)
            if hit:
                yield cut[emitted:]
                return
            safe = len(text) - hold + 1 if hold else len(text)  # keep back a possible stop-string prefix
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        if len(text) > emitted:
            yield text[emitted:]


def _cut_at_stop(text: str, stops) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
