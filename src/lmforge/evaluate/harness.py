"""lm-evaluation-harness adapter: lmforge models as lm-eval's `lmforge` model type.

Importing this module registers the model with lm-eval (``pip install lmforge[eval]``). lm-eval
0.4.13 has no plugin discovery, so its own ``lm_eval`` command cannot see the registration; use
``python -m lmforge.evaluate`` (lm_eval's command line with the model registered, same arguments),
``lmforge eval --harness TASKS``, or ``import lmforge.evaluate.harness`` before
``lm_eval.simple_evaluate(model="lmforge", ...)``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..errors import LmforgeError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
    from tqdm import tqdm
except ImportError:
    raise LmforgeError("the lm-eval harness is not installed; install it with `pip install lmforge[eval]`") from None

from ..generation.sampling import GenerationConfig
from .compare import load_llm
from .scoring import continuation_logprobs, encode_pair

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_TOKS = 256


def parse_batch_size(batch_size, max_batch_size: int | None = None) -> int:
    """lm-eval passes an int, a digit string, or "auto"/"auto:N" (taken here as the default size)."""
    if isinstance(batch_size, str) and batch_size.startswith("auto"):
        size = DEFAULT_BATCH_SIZE
    else:
        try:
            size = int(batch_size)
        except (TypeError, ValueError):
            raise LmforgeError(f"batch_size must be a positive integer or 'auto' (got {batch_size!r})") from None
    if size < 1:
        raise LmforgeError(f"batch_size must be a positive integer (got {size})")
    return min(size, max_batch_size) if max_batch_size else size


def pick_device(device: str | None) -> str:
    """lm-eval's CLI passes device="cuda:0" by default: fall back to the CPU without a GPU, as its
    `hf` model does."""
    if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def generation_config(gen_kwargs: dict) -> GenerationConfig:
    """lm-eval generation kwargs (until, max_gen_toks, do_sample, temperature, top_k, top_p)."""
    kw = dict(gen_kwargs)
    until = kw.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    max_new = kw.pop("max_gen_toks", None) or kw.pop("max_new_tokens", None) or DEFAULT_MAX_GEN_TOKS
    kw.pop("max_new_tokens", None)  # an alias lm-eval accepts; max_gen_toks wins
    do_sample = bool(kw.pop("do_sample", False))
    temperature = float(kw.pop("temperature", 0.0) or 0.0)
    if not do_sample:
        temperature = 0.0
    elif temperature == 0.0:
        temperature = 1.0
    sampling = {k: kw.pop(k) for k in ("top_k", "top_p", "seed") if kw.get(k) is not None}
    if kw:
        log.warning("lmforge ignores these generation kwargs: %s", ", ".join(sorted(kw)))
    return GenerationConfig(max_new_tokens=int(max_new), temperature=temperature,
                            stop=tuple(s for s in until if s), **sampling)


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """text up to the earliest stop string."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


@register_model("lmforge")
class LmforgeLM(TemplateLM):
    """An lmforge model for lm-eval. Model args: pretrained (HF folder, .gguf file or alias), dtype,
    device, quantize, threads, batch_size, max_length, act_bits (32: exact scoring); `llm` passes an already
    loaded lmforge.LLM."""

    def __init__(self, pretrained: str | None = None, dtype: str = "float32", device: str | None = None,
                 quantize: str | None = None, threads: int | None = None, batch_size=DEFAULT_BATCH_SIZE,
                 max_batch_size: int | None = None, max_length: int | None = None, llm=None, act_bits=32):
        super().__init__()
        if llm is None:
            llm = load_llm(pretrained, dtype=dtype, device=pick_device(device),
                           threads=int(threads) if threads else None, quantize=quantize, act_bits=int(act_bits))
        self.llm = llm
        self.tokenizer = llm.tokenizer
        self._device = llm.device
        self.batch_size = parse_batch_size(batch_size, max_batch_size)
        self._max_length = int(max_length) if max_length else llm.config.max_seq_len

    # ------------------------------------------------------------------------------ tokenization
    @property
    def eot_token_id(self) -> int:
        ids = sorted(self.tokenizer.eos_ids) or list(self.llm.config.eos_token_ids)
        if not ids:
            raise LmforgeError("the model has no end-of-sequence token, which lm-eval needs as a prefix")
        return ids[0]

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(self.llm.source.path).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens is None:  # the tokenizer's own rule, unless the text already starts with BOS
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and string.startswith(bos))
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return encode_pair(self.tok_encode, context, continuation)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template else None

    # ----------------------------------------------------------------------------------- scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: [((context, continuation), context ids, continuation ids), ...]"""
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        results = continuation_logprobs(self.llm.score, pairs, self.max_length, self.batch_size,
                                        desc="loglikelihood", disable_progress=disable_tqdm)
        for (strings, _, _), answer in zip(requests, results):
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in disjoint windows of max_length tokens (lm-eval's rule:
        the first token is predicted from the prefix token, later windows get no extra context)."""
        pairs, owner = [], []
        for index, (string,) in enumerate(req.args for req in requests):
            windows = get_rolling_token_windows(token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                                                max_seq_len=self.max_length, context_len=1)
            for ctx, cont in map(make_disjoint_window, windows):
                pairs.append((ctx, cont))
                owner.append(index)
        results = continuation_logprobs(self.llm.score, pairs, self.max_length, self.batch_size,
                                        desc="loglikelihood_rolling", disable_progress=disable_tqdm)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, results):
            totals[index] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -------------------------------------------------------------------------------- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Batched generation; requests with the same generation kwargs share batches, longest first."""
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)
        for indices in groups.values():
            gen = generation_config(requests[indices[0]].args[1])
            room = self.max_length - gen.max_new_tokens
            if room < 1:
                raise LmforgeError(f"max_gen_toks ({gen.max_new_tokens}) leaves no room for the prompt in the "
                                   f"{self.max_length}-token context; lower it")
            prompts = {i: self.tok_encode(requests[i].args[0])[-room:] for i in indices}
            order = sorted(indices, key=lambda i: -len(prompts[i]))
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                outputs = self.llm.generate_ids([prompts[i] for i in batch], gen)
                for i, ids in zip(batch, outputs):
                    results[i] = cut_at_stop(self.tokenizer.decode(ids), gen.stop)
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
                bar.update(len(batch))
        bar.close()
        return results


def harness_scores(results: dict) -> tuple[dict[str, float], dict[str, int]]:
    """Flatten lm-eval's results: {"task/metric": value} (filter named when not "none"), and the
    number of examples of each task."""
    scores = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if metric in ("alias", "sample_len") or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            suffix = f"[{filter_name}]" if filter_name not in ("", "none") else ""
            scores[f"{task}/{metric}{suffix}"] = float(value)
    counts = {f"{task}/examples": int(n["effective"]) for task, n in results.get("n-samples", {}).items()}
    return scores, counts


def run_harness(llm, tasks: list[str], include_path: str | None = None, limit: int | None = None,
                num_fewshot: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE
                ) -> tuple[dict[str, float], dict[str, int]]:
    """Run lm-eval tasks on a loaded lmforge.LLM; returns (scores, counts) as harness_scores."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise LmforgeError(f"--include-path {include_path}: no such folder; give the folder of your task yaml files")
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LmforgeError(f"unknown lm-eval task(s): {', '.join(unknown)}; list them with `lm-eval ls tasks` "
                           "or add your own yaml folder with --include-path")
    results = lm_eval.simple_evaluate(model=LmforgeLM(llm=llm, batch_size=batch_size), tasks=tasks,
                                      task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                                      bootstrap_iters=0, log_samples=False)
    return harness_scores(results)
