"""`lmforge eval`: perplexity, LAMBADA or lm-eval tasks, on one model or several side by side."""
from __future__ import annotations

import argparse
import os

from ..errors import LmforgeError
from ..loader import DEFAULT_MODEL
from .compare import Variant, check_output_path, format_table, load_llm, parse_compare, report, run_variants, write_json


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="accuracy: perplexity, LAMBADA, lm-eval-harness tasks; compare precisions",
                       description="Evaluate a model (or several, with --compare) on one task.")
    e.add_argument("--model", "-m", default=None,
                   help=f"HF folder, .gguf file or alias (default: {DEFAULT_MODEL})")
    e.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    e.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    e.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    task = e.add_mutually_exclusive_group(required=True)
    task.add_argument("--task", choices=("perplexity", "lambada"), help="a built-in task (needs --data)")
    task.add_argument("--harness", metavar="TASKS", help="comma-separated lm-eval tasks (needs lm-eval)")
    e.add_argument("--data", metavar="FILE", help="perplexity: a UTF-8 text file; lambada: the LAMBADA jsonl file")
    e.add_argument("--context-len", type=int, default=None,
                   help="perplexity window in tokens (default: the model's context, at most 1024)")
    e.add_argument("--stride", type=int, default=None, help="perplexity: tokens between windows (default: half the window)")
    e.add_argument("--max-tokens", type=int, default=None, help="perplexity: score only the first N tokens of the text")
    e.add_argument("--limit", type=int, default=None, help="lambada/harness: only the first N examples (of each task)")
    e.add_argument("--num-fewshot", type=int, default=None, help="harness: few-shot examples per prompt")
    e.add_argument("--include-path", metavar="DIR", default=None, help="harness: a folder of extra task yaml files")
    e.add_argument("--act-bits", type=int, choices=(32, 16, 8), default=32,
                   help="how the native kernels of quantized weights take activations: 32 (default: fp32, scores "
                        "are exactly those of the dequantized weights), 16 or 8 (rounded as lmforge run rounds them)")
    e.add_argument("--batch-size", type=int, default=None,
                   help="sequences per forward pass (default: 1 for perplexity, 8 otherwise)")
    e.add_argument("--compare", metavar="LIST", default=None,
                   help="comma-separated: none (the model as it is), quantization schemes, other model paths")
    e.add_argument("--output-json", metavar="FILE", default=None, help="also write the results as JSON")


# flags that apply to some tasks only
_TASK_FLAGS = {"--data": ("perplexity", "lambada"), "--context-len": ("perplexity",), "--stride": ("perplexity",),
               "--max-tokens": ("perplexity",), "--limit": ("lambada", "harness"), "--num-fewshot": ("harness",),
               "--include-path": ("harness",)}


def _task_runner(args):
    """(task name, settings, LLM -> (scores, counts)); reads and checks the data before any model loads."""
    if args.batch_size is not None and args.batch_size < 1:
        raise LmforgeError(f"--batch-size must be at least 1 (got {args.batch_size})")
    misplaced = [flag for flag, allowed in _TASK_FLAGS.items()
                 if getattr(args, flag.lstrip("-").replace("-", "_")) is not None and (args.task or "harness") not in allowed]
    if misplaced:
        raise LmforgeError(f"{misplaced[0]} does not apply to {'--task ' + args.task if args.task else '--harness'}; "
                           "drop it")
    if args.harness:
        return _harness_runner(args)
    if args.data is None:
        raise LmforgeError(f"--task {args.task} needs a data file: add --data FILE")
    if args.task == "perplexity":
        from .perplexity import check_windows, perplexity, read_text

        check_windows(args.context_len, args.stride)
        text = read_text(args.data)
        settings = {"data": args.data, "context_len": args.context_len, "stride": args.stride,
                    "max_tokens": args.max_tokens}

        def run(llm):
            result = perplexity(llm, text, args.context_len, args.stride, args.max_tokens, args.batch_size or 1)
            return result.scores(), result.counts()
        return "perplexity", settings, run
    from .lambada import lambada, read_lambada

    texts = read_lambada(args.data, args.limit)
    settings = {"data": args.data, "limit": args.limit}

    def run(llm):
        result = lambada(llm, texts, args.batch_size or 8)
        return result.scores(), result.counts()
    return "lambada", settings, run


def _harness_runner(args):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # no downloads at run time; read before lm-eval loads
    from .harness import run_harness

    tasks = [t.strip() for t in args.harness.split(",") if t.strip()]
    if not tasks:
        raise LmforgeError("--harness needs at least one task name, e.g. --harness lambada_openai")
    settings = {"tasks": tasks, "include_path": args.include_path, "limit": args.limit,
                "num_fewshot": args.num_fewshot}

    def run(llm):
        return run_harness(llm, tasks, args.include_path, args.limit, args.num_fewshot, args.batch_size or 8)
    return "harness", settings, run


def run(args: argparse.Namespace) -> int:
    if args.output_json:
        check_output_path(args.output_json)
    task, settings, evaluate = _task_runner(args)
    variants = (parse_compare(args.compare, args.model) if args.compare
                else [Variant(args.model or DEFAULT_MODEL, args.model, None)])
    outcomes = run_variants(variants, evaluate, lambda v: load_llm(v.model, args.dtype, args.device,
                                                                    args.threads, v.quantize, args.act_bits))
    print(format_table(outcomes))
    if args.output_json:
        settings.update(dtype=args.dtype, device=args.device, act_bits=args.act_bits)
        write_json(args.output_json, report(task, settings, outcomes))
    return 0
