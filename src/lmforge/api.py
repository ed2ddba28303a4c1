"""The public Python API: ``from lmforge import LLM``."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .errors import LmforgeError
from .generation.engine import Engine
from .generation.sampling import GenerationConfig
from .loader import load, parse_device, parse_dtype
from .quant.linear import DEFAULT_ACT_BITS, set_activation_bits
from .tokenizer import IncrementalDecoder


class LLM:
    """A loaded model with its tokenizer and engine.

    >>> llm = LLM("smollm2-135m-instruct")
    >>> llm.chat([{"role": "user", "content": "What is the capital of France?"}])
    """

    def __init__(self, model: str | Path | None = None, dtype: str | torch.dtype = "float32",
                 device: str | torch.device = "cpu", threads: int | None = None, quantize=None,
                 adapters=None, merge_adapters: bool = True, dequantize: bool = False,
                 act_bits: int = DEFAULT_ACT_BITS, kv_cache_dtype: str | torch.dtype | None = None,
                 compile: bool = False, random_weights: bool = False):
        """quantize: RTN at load time, "int8" | "int4" | "int4-g128" | "int4-g64-asym" | "fp8" (see
        lmforge.quant.parse_quantize); a folder written by `lmforge quantize` needs nothing.
        adapters: PEFT LoRA folder(s) (a path, a list, or {name: path}); merged into the weights
        (before quantization), or with merge_adapters=False applied per request: generate(adapter=name).
        dequantize: expand a GGUF file's Q4_0/Q4_1/Q4_K/Q5_0/Q6_K/Q8_0 weights to `dtype` at load instead of running
        them natively.
        act_bits: how the native CPU kernels of quantized weights take activations (prompts and decode
        steps): 16 (default) rounds them per 32 values to two int8 planes (~15 bits, logits within ~0.02
        of fp32), 8 to one (llama.cpp's rounding: faster, top-1 tokens differ a few % of the time), 32
        keeps fp32 (the exact dequantized-weight product, slowest).
        kv_cache_dtype: the KV cache's dtype. "float16" under fp32 activations halves what attention reads
        at long context, the keys and values rounded to fp16 as they are stored; it is the default for
        quantized weights with rounded activations (act_bits 16 or 8) on the CPU in fp32, as in llama.cpp.
        Otherwise the default is `dtype`.
        compile: decode steps that lmforge's native CPU step does not run (CUDA; bf16/fp16 on the CPU) go
        through torch.compile, on CUDA with CUDA graphs (see Engine); the first step of each batch size
        and cache length pays the compilation.
        random_weights: a folder with config.json alone makes a model of that shape with random weights
        (normal, std 0.02; norms 1): benchmarks of a shape without its checkpoint."""
        if threads:
            torch.set_num_threads(threads)
        self.dtype, self.device = parse_dtype(dtype), parse_device(device)
        self.random_weights = random_weights
        merge_first = adapters is not None and merge_adapters
        self.model, self._tokenizer, self.source = load(model, self.dtype, self.device,
                                                        quantize=None if merge_first else quantize,
                                                        dequantize=dequantize or adapters is not None,
                                                        random_weights=random_weights)
        self.adapters = None
        if adapters is not None:
            from .adapters import attach
            self.adapters = attach(self.model, self.source, adapters, merge_adapters, self.dtype, self.device)
            if merge_first and quantize is not None:
                from .quant import quantize_on_load
                quantize_on_load(self.model, quantize, self.source)
        rounded = set_activation_bits(self.model, act_bits) > 0 and act_bits != 32
        if kv_cache_dtype is None and rounded and self.device.type == "cpu" and self.dtype == torch.float32:
            kv_cache_dtype = torch.float16
        self.config = self.model.cfg
        self.engine = Engine(self.model, self.device, self.dtype,
                             parse_dtype(kv_cache_dtype) if kv_cache_dtype is not None else None, compile=compile)
        self._speculators: dict = {}
        self.speculation = None  # SpecStats of the last generation with a draft

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

    def speculator(self, draft, speculate_k: int | None = None):
        """A speculative decoder with this model as the target: draft is "ngram", "self-int4", a model
        path or alias, or an LLM with the same vocabulary (see lmforge.generation.speculative). A draft
        model is loaded once and kept; its statistics start from zero on each call (pass a Speculator
        as draft to keep counting)."""
        from dataclasses import replace

        from .generation.speculative import Speculator, SpecStats, build_speculator
        if isinstance(draft, Speculator):  # statistics keep adding up across calls
            return draft
        key = draft if isinstance(draft, str) else id(draft)
        if key not in self._speculators:
            self._speculators[key] = build_speculator(self, draft)
        return replace(self._speculators[key], k=4 if speculate_k is None else speculate_k, stats=SpecStats())

    def _steps(self, speculator):
        """The token-step generator: the Engine's, or a speculative decoder's (one prompt at a time)."""
        if speculator is None:
            return self.engine.generate
        self.speculation = speculator.stats
        return speculator.generate

    def generate_ids(self, prompts: list[list[int]], gen: GenerationConfig, chat: bool = False,
                     speculator=None, pad_multiple: int = 1) -> list[list[int]]:
        """Token ids in, generated token ids out (EOS included when reached; a row ends early when
        one of gen.stop appears in its text). With a speculator the prompts run one after another;
        otherwise as one batch, left-padded to a multiple of pad_multiple tokens."""
        eos, pad = self._eos(gen, chat), self._pad_id()
        if gen.num_beams > 1 and speculator is None:
            from .generation.beam import beam_search
            return [beam_search(self.engine, p, gen, eos, pad) for p in prompts]
        if speculator is not None and len(prompts) > 1:
            return [out for p in prompts for out in self.generate_ids([p], gen, chat, speculator)]
        out: list[list[int]] = [[] for _ in prompts]
        done = torch.zeros(len(prompts), dtype=torch.bool, device=self.device)
        tail = max((len(s) for s in gen.stop), default=0) + 4
        if speculator is None:
            steps = self.engine.generate(prompts, gen, eos, pad, done=done, pad_multiple=pad_multiple)
        else:
            steps = self._steps(speculator)(prompts, gen, eos, pad, done=done)
        for step in steps:
            for i, t in enumerate(step.tolist()):
                if t < 0:
                    continue
                out[i].append(t)
                if gen.stop and _cut_at_stop(self.tokenizer.decode(out[i][-tail:]), gen.stop)[1]:
                    done[i] = True
        return out

    def finish(self, ids: list[int], gen: GenerationConfig) -> str:
        """The text of generated ids, cut at the first stop string."""
        return _cut_at_stop(self.tokenizer.decode(ids), gen.stop)[0]

    # ------------------------------------------------------------------------------------- public
    def generate(self, prompts: str | list[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, num_beams: int = 1,
                 seed: int | None = None, stop: str | list[str] | None = None, draft=None,
                 speculate_k: int | None = None, adapter: str | None = None, **kw) -> list[str]:
        """Continue each prompt (raw text, no chat template). Returns the generated text only.
        draft: speculative decoding (see `speculator`); `self.speculation` then holds its statistics.
        adapter: the name of an unmerged adapter to apply (see __init__)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        gen = self._gen(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        num_beams=num_beams, seed=seed, stop=stop, **kw)
        spec = self.speculator(draft, speculate_k) if draft is not None else None
        ids = [self.tokenizer.encode(p) for p in prompts]
        with self.use_adapter(adapter):
            return [self.finish(o, gen) for o in self.generate_ids(ids, gen, speculator=spec)]

    def stream(self, prompt: str, max_new_tokens: int = 64, draft=None, speculate_k: int | None = None,
               adapter: str | None = None, **kw) -> Iterator[str]:
        """Yield text pieces of the continuation of `prompt` as they are generated."""
        gen = self._gen(max_new_tokens=max_new_tokens, **kw)
        spec = self.speculator(draft, speculate_k) if draft is not None else None
        with self.use_adapter(adapter):
            yield from self._stream_ids(self.tokenizer.encode(prompt), gen, chat=False, speculator=spec)

    @contextmanager
    def use_adapter(self, name: str | None):
        """Apply the unmerged adapter `name` inside the block (None: the model as loaded)."""
        if name is None:
            yield
            return
        if self.adapters is None:
            raise LmforgeError(f"adapter {name!r} asked for, but no adapters were loaded unmerged; "
                               "use LLM(..., adapters={name: folder}, merge_adapters=False)")
        with self.adapters.use(name):
            yield

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
    def _stream_ids(self, ids: list[int], gen: GenerationConfig, chat: bool, speculator=None) -> Iterator[str]:
        if gen.num_beams > 1 and speculator is None:
            yield self.finish(self.generate_ids([ids], gen, chat=chat)[0], gen)
            return
        decoder = IncrementalDecoder(self.tokenizer)
        eos = self._eos(gen, chat)
        text, emitted = "", 0
        hold = max((len(s) for s in gen.stop), default=0)
        for step in self._steps(speculator)([ids], gen, eos, self._pad_id()):
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
