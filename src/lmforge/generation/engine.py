"""The Engine: prefill and decode over a static KV cache. Every command generates through it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .. import kernels
from ..cache import LayerKVCache, StaticKVCache
from ..config import ModelConfig
from ..errors import LmforgeError
from ..models import native_step
from ..models.transformer import Batch, Transformer
from .sampling import GenerationConfig, apply_repetition_penalty, select


@dataclass
class Prompts:
    """A left-padded batch of prompts."""
    tokens: torch.Tensor     # [B, P]
    valid: torch.Tensor      # [B, P] bool, False on padding
    lengths: list[int]

    @classmethod
    def pad(cls, prompts: list[list[int]], pad_id: int, device, multiple: int = 1) -> "Prompts":
        """Left-pad to the longest prompt, rounded up to a multiple of `multiple` (length buckets)."""
        P = -(-max(len(p) for p in prompts) // multiple) * multiple
        tokens = torch.full((len(prompts), P), pad_id, dtype=torch.long)
        valid = torch.zeros((len(prompts), P), dtype=torch.bool)
        for i, p in enumerate(prompts):
            if p:
                tokens[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
                valid[i, P - len(p):] = True
        return cls(tokens.to(device), valid.to(device), [len(p) for p in prompts])


COMPILE_BUCKET = 256  # compiled steps' caches are a multiple of this many slots (fewer shapes to compile)


def static_decode_step(model: Transformer, cache: LayerKVCache, tokens: torch.Tensor, slot: torch.Tensor,
                       key_valid: torch.Tensor, pos_table: torch.Tensor, window: int) -> torch.Tensor:
    """Logits [B, V] of one decode step whose every shape is fixed by the cache: tokens [B] written at
    cache slot `slot` (a 0-d int64 tensor, not a Python int), attending to every slot of the cache that is
    valid and not past `slot`. A changing position is data, not shape, so torch.compile makes one graph
    (and on CUDA one CUDA graph) per batch size and cache length (see Engine's ``compile``)."""
    L = cache.max_len
    k_slots = torch.arange(L, device=tokens.device)
    visible = key_valid & (k_slots <= slot)[None]              # [B, L]
    if window:
        visible = visible & ((slot - k_slots) < window)[None]
    slots = slot.reshape(1)
    batch = Batch(positions=pos_table.index_select(1, slots), mask=visible[:, None, None], key_pos=pos_table,
                  slots=slots, kv_len=L)
    return model(tokens[:, None], batch, cache, last_only=True)[:, -1]


class Engine:
    def __init__(self, model: Transformer, device: torch.device, dtype: torch.dtype,
                 kv_dtype: torch.dtype | None = None, compile: bool = False):
        """compile: run decode steps that the native CPU step does not take (CUDA; bf16/fp16 on the CPU)
        through torch.compile, with CUDA graphs on CUDA (mode "reduce-overhead"): static_decode_step over
        a cache of a fixed length, a multiple of COMPILE_BUCKET slots kept from one generation to the
        next. The first step of each batch size and cache length compiles (see docs)."""
        self.model, self.device, self.dtype = model, device, dtype
        self.kv_dtype = kv_dtype or dtype  # the KV cache's (fp16 halves what attention reads)
        self.cfg: ModelConfig = model.cfg
        self._plan: tuple = (None, None, "not built")  # (model signature, DecodePlan or None, why not)
        self.compile = compile
        self._compiled = None  # torch.compile(static_decode_step), made on first use
        self._static_caches: dict[tuple[int, int], LayerKVCache] = {}  # (batch, length) -> cache

    # ------------------------------------------------------------------------------ the two steps
    def forward(self, tokens, batch: Batch, cache, last_only: bool, plan=None) -> torch.Tensor:
        """The model's logits; a one-token step with a native ``plan`` (see native_plan) runs in it."""
        with torch.inference_mode():
            if (plan is not None and tokens.shape[1] == 1 and last_only and batch.mask.dtype == torch.bool
                    and cache is not None and cache.k.is_contiguous()
                    and cache.k.dtype in kernels.KV_CACHE_DTYPES):
                return self.model.decode_native(plan, tokens, batch, cache)
            return self.model(tokens, batch, cache, last_only=last_only)

    def native_plan(self):
        """The model's native decode step (models.native_step) when it fits, else None (the reason is in
        ``native_plan_reason``). Made once and remade when the model's modules or tensors change; decode
        loops ask once per generation."""
        if self.device.type != "cpu" or self.dtype != torch.float32:
            self._plan = (None, None, "the native step is for fp32 activations on the CPU")
            return None
        if native_step.disabled():
            self._plan = (None, None, f"{native_step.DISABLE_ENV}=0")
            return None
        key = [(id(m), getattr(m, "act_bits", 0), *map(id, m._parameters.values()), *map(id, m._buffers.values()))
               for m in self.model.modules()]  # ~1 ms for a 30-layer model
        if self._plan[0] != key:
            try:
                self._plan = (key, native_step.build(self.model), None)
            except native_step.Unfit as e:
                self._plan = (key, None, str(e))
            except RuntimeError as e:  # a shape the plan's checks refuse: run op by op rather than fail
                self._plan = (key, None, f"the native step refused the model: {str(e).splitlines()[0]}")
        return self._plan[1]

    @staticmethod
    def takes_tokens(plan, cache) -> bool:
        """Whether one-token steps on this cache can go through step_tokens (see generate)."""
        return (plan.takes_tokens() and cache.k.is_contiguous() and cache.v.is_contiguous()
                and cache.k.dtype in kernels.KV_CACHE_DTYPES)

    def step_tokens(self, plan, tokens, slot: int, key_valid, pos_table, cache, greedy=None) -> torch.Tensor:
        """Logits [B, V] of one decode step of tokens [B] at cache slot `slot`, its input made in the plan
        (takes_tokens); with greedy [B] int64 given, the step also writes each row's greedy token there."""
        return plan.step_tokens(tokens, pos_table, cache.k, cache.v, slot, key_valid, self.cfg.sliding_window or 0,
                                greedy)

    @property
    def native_plan_reason(self) -> str | None:
        """Why the last native_plan() gave None (None when it gave a plan)."""
        return self._plan[2]

    def check_lengths(self, prompts: list[list[int]], max_new_tokens: int) -> int:
        """Validate prompt lengths; return the number of new tokens that fit in the context."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise LmforgeError("empty prompt: give at least one token of input")
        ctx = self.cfg.max_seq_len
        longest = max(len(p) for p in prompts)
        if longest >= ctx:
            raise LmforgeError(f"the prompt is {longest} tokens long but the model's context window is "
                               f"{ctx} tokens; shorten the prompt to at most {ctx - 1} tokens")
        return min(max_new_tokens, ctx - longest)

    def new_cache(self, batch_size: int, max_len: int) -> StaticKVCache:
        return StaticKVCache(self.cfg, batch_size, max_len, self.kv_dtype, self.device)

    # ------------------------------------------------------------------------- compiled steps
    def compiled_step(self):
        """torch.compile(static_decode_step), made once: CUDA graphs on CUDA."""
        if self._compiled is None:
            if self.device.type == "cuda":
                import torch._inductor.config as inductor
                # one-row products become fused reductions that read the (dequantized) weight once
                inductor.coordinate_descent_tuning = True
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._compiled = torch.compile(static_decode_step, mode=mode, dynamic=False)
        return self._compiled

    def compiled_step_error(self, prompts: list[list[int]], steps: int = 4) -> float:
        """The largest difference between the compiled step's logits and those of static_decode_step run
        uncompiled, relative to the largest logit, over `steps` greedy steps after the prompts' prefill:
        a check of torch.compile on a device or dtype (tests/test_compile.py, benchmarks/cuda_check.py)."""
        batch_in = Prompts.pad(prompts, 0, self.device)
        B, P = batch_in.tokens.shape
        cache = self.static_cache(B, P + steps)
        batch, key_valid, pos_table = self.prefill_batch(batch_in, cache.max_len)
        logits = self.forward(batch_in.tokens, batch, cache, last_only=True)[:, -1]
        twin, window, worst = cache.clone(), self.cfg.sliding_window or 0, 0.0
        for step in range(steps):
            tokens, slot = logits.argmax(-1), torch.tensor(P + step, device=self.device)
            with torch.inference_mode():
                logits = self.compiled_step()(self.model, cache, tokens, slot, key_valid, pos_table, window).clone()
                ref = static_decode_step(self.model, twin, tokens, slot, key_valid, pos_table, window)
            worst = max(worst, ((logits - ref).abs().max() / ref.abs().max()).item())
        return worst

    def static_cache(self, batch_size: int, length: int) -> LayerKVCache:
        """A cache for compiled steps of at least `length` slots, rounded up to COMPILE_BUCKET and kept
        for the next generation of this batch size: the compiled graph (and its CUDA graph) is bound to
        the buffers' shapes and, on CUDA, to their addresses. Slots left over from an earlier generation
        are never attended to (the mask stops at the current slot)."""
        L = -(-length // COMPILE_BUCKET) * COMPILE_BUCKET
        key = (batch_size, L)
        if key not in self._static_caches:
            self._static_caches.clear()  # one live shape at a time: a 7B model's cache is gigabytes
            cache = LayerKVCache(self.cfg, batch_size, L, self.kv_dtype, self.device)
            if self.device.type == "cuda":
                for buffer in cache.buffers():
                    torch._dynamo.mark_static_address(buffer)
            self._static_caches[key] = cache
        return self._static_caches[key]

    def _window(self, mask: torch.Tensor, q_slots: torch.Tensor, L: int) -> torch.Tensor:
        if self.cfg.sliding_window is None:
            return mask
        k_slots = torch.arange(L, device=self.device)
        return mask & ((q_slots[:, None] - k_slots[None, :]) < self.cfg.sliding_window)

    def prefill_batch(self, prompts: Prompts, total_len: int) -> tuple[Batch, torch.Tensor, torch.Tensor]:
        """Batch for the prefill step plus the per-slot validity and position tables [B, total_len]."""
        B, P = prompts.tokens.shape
        key_valid = torch.ones((B, total_len), dtype=torch.bool, device=self.device)
        key_valid[:, :P] = prompts.valid
        pos = (prompts.valid.long().cumsum(1) - 1).clamp(min=0)  # [B, P]
        steps = torch.arange(1, total_len - P + 1, device=self.device)
        pos_table = torch.cat([pos, pos[:, -1:] + steps[None, :]], dim=1)  # [B, total_len]
        slots = torch.arange(P, device=self.device)
        causal = slots[:, None] >= slots[None, :]
        mask = self._window(causal, slots, P)[None] & key_valid[:, None, :P]
        mask = mask | torch.eye(P, dtype=torch.bool, device=self.device)[None]  # padding rows see themselves
        batch = Batch(positions=pos, mask=mask[:, None], key_pos=pos_table[:, :P], slots=slots, kv_len=P)
        return batch, key_valid, pos_table

    def chunk_batch(self, start: int, n: int, key_valid: torch.Tensor, pos_table: torch.Tensor) -> Batch:
        """Batch for n new tokens written at cache slots start .. start + n - 1, each attending to the
        valid slots up to its own (decode: n = 1; speculative verification: the draft tokens). Slots
        past a query are masked, so stale entries there (rejected drafts) are never read."""
        L = start + n
        slots = torch.arange(start, L, device=self.device)
        if n == 1 and self.cfg.sliding_window is None:  # a decode step: every valid slot, a view
            mask = key_valid[:, None, :L]
        else:
            causal = slots[:, None] >= torch.arange(L, device=self.device)[None, :]  # [n, L]
            mask = self._window(key_valid[:, None, :L] & causal[None], slots, L)  # [B, n, L]
        return Batch(positions=pos_table[:, start:L], mask=mask[:, None], key_pos=pos_table[:, :L],
                     slots=slots, kv_len=L)

    def decode_batch(self, slot: int, key_valid: torch.Tensor, pos_table: torch.Tensor) -> Batch:
        return self.chunk_batch(slot, 1, key_valid, pos_table)

    # ---------------------------------------------------------------------------------- generate
    def generate(self, prompts: list[list[int]], gen: GenerationConfig, eos_ids=frozenset(),
                 pad_id: int = 0, done: torch.Tensor | None = None, pad_multiple: int = 1) -> Iterator[torch.Tensor]:
        """Yield the next token of every sequence, step by step: a LongTensor [B], -1 for rows that
        have already finished. A row finishes on an EOS token (which is yielded) or when
        max_new_tokens is reached; the caller may also finish rows by setting ``done[i] = True``
        (a bool tensor [B] it passes in), e.g. when a stop string appears. Prompts are left-padded to
        a multiple of pad_multiple tokens."""
        max_new = self.check_lengths(prompts, gen.max_new_tokens)
        batch_in = Prompts.pad(prompts, pad_id, self.device, pad_multiple)
        B, P = batch_in.tokens.shape
        plan = self.native_plan()
        compiled = self.compiled_step() if self.compile and plan is None else None
        cache = self.static_cache(B, P + max_new) if compiled else self.new_cache(B, P + max_new)
        if compiled:
            owner = cache.owner = object()  # the kept cache serves one generation at a time
        batch, key_valid, pos_table = self.prefill_batch(batch_in, cache.max_len)
        generator = None
        if gen.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(gen.seed)
        eos = torch.tensor(sorted(eos_ids if not gen.ignore_eos else ()), dtype=torch.long, device=self.device)
        seen = None
        if gen.repetition_penalty != 1.0:
            seen = torch.zeros((B, self.cfg.vocab_size), dtype=torch.bool, device=self.device)
            for i, p in enumerate(prompts):
                seen[i, torch.tensor(p, device=self.device)] = True
        if done is None:
            done = torch.zeros(B, dtype=torch.bool, device=self.device)
        rows = torch.arange(B, device=self.device)
        # A plan that takes token ids makes each step's input itself and, for greedy decoding without
        # a repetition penalty, picks the next tokens too: between two steps no op runs but the call
        # (on a small model the ops around a step cost ~8% of it, run on caches the weights have evicted).
        tokens_in = plan is not None and self.takes_tokens(plan, cache)
        native_greedy = tokens_in and not gen.do_sample and seen is None
        eos_set = frozenset(eos.tolist())
        greedy = None  # the plan's greedy tokens from the last step

        logits = self.forward(batch_in.tokens, batch, cache, last_only=True)[:, -1]
        finished = bool(done.any())  # while no row is done, the tokens need no masking
        for step in range(max_new):
            if greedy is not None and not (step < gen.min_new_tokens and eos_set):
                token = greedy
            else:
                if seen is not None:
                    logits = apply_repetition_penalty(logits, seen, gen.repetition_penalty)
                if step < gen.min_new_tokens and eos.numel():
                    logits = logits.index_fill(1, eos, float("-inf"))  # out of place: an inference tensor
                token = select(logits, gen, generator)
            if finished:
                token = torch.where(done, torch.full_like(token, -1), token)
            yield token
            if eos_set and not eos_set.isdisjoint(token.tolist()):
                done |= torch.isin(token, eos)
            if seen is not None:
                seen[rows, token.clamp(min=0)] = True
            finished = bool(done.any())  # also rows the caller finished while the token was out
            if step + 1 == max_new or (finished and bool(done.all())):
                return
            slot = P + step
            feed = torch.where(done, torch.full_like(token, pad_id), token) if finished else token
            if tokens_in:
                greedy = torch.empty(B, dtype=torch.long) if native_greedy else None
                logits = self.step_tokens(plan, feed, slot, key_valid, pos_table, cache, greedy)
            elif compiled is not None:
                if cache.owner is not owner:
                    raise LmforgeError("another compiled generation of the same batch size took this engine's "
                                       "cache; with compile=True, run an engine's generations one at a time")
                with torch.inference_mode():
                    slot_t = torch.tensor(slot, device=self.device)
                    logits = compiled(self.model, cache, feed, slot_t, key_valid, pos_table,
                                      self.cfg.sliding_window or 0).clone()  # a CUDA graph's output is reused
            else:
                logits = self.forward(feed[:, None], self.decode_batch(slot, key_valid, pos_table), cache,
                                      last_only=True, plan=plan)[:, -1]

    def score(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits [B, S, V] (fp32) for token ids [B, S], no cache."""
        tokens = tokens.to(self.device)
        B, S = tokens.shape
        if S > self.cfg.max_seq_len:
            raise LmforgeError(f"sequence of {S} tokens is longer than the context window "
                               f"({self.cfg.max_seq_len}); score it in windows")
        slots = torch.arange(S, device=self.device)
        mask = self._window(slots[:, None] >= slots[None, :], slots, S)
        positions = slots[None].expand(B, S)
        batch = Batch(positions=positions, mask=mask[None, None].expand(B, 1, S, S), key_pos=positions,
                      slots=None, kv_len=S)
        return self.forward(tokens, batch, None, last_only=False)
