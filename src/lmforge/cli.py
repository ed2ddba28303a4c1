"""`lmforge generate|chat|info|bench|eval|quantize`: thin shells over the LLM API."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .errors import LmforgeError

EXIT_USAGE = 2


def _generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None,
                   help="HF folder, .gguf file or alias (default: smollm2-135m-instruct)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate (default 128)")
    p.add_argument("--min-new-tokens", type=int, default=None)
    p.add_argument("--greedy", action="store_true", help="pick the most likely token (the default)")
    p.add_argument("--temperature", type=float, default=None, help="sample with this temperature (> 0)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--num-beams", type=int, default=None, help="beam search with B beams")
    p.add_argument("--length-penalty", type=float, default=None)
    p.add_argument("--early-stopping", action="store_true", default=None)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--quantize", default=None, metavar="SPEC",
                   help="quantize at load time (RTN): int8, fp8, int4 (group 128), int4-g64, int4-g128-asym, ...")
    p.add_argument("--dequantize", action="store_true",
                   help="expand a GGUF file's Q4_0/Q4_1/Q4_K/Q5_0/Q5_K/Q6_K/Q8_0 weights to --dtype instead of running them natively")
    p.add_argument("--act-bits", type=int, choices=(32, 16, 8), default=16,
                   help="how the native kernels of quantized weights take activations (prompts and decode steps): "
                        "16 (default, ~15 bits), 8 (llama.cpp's int8 rounding, fastest) or 32 (fp32, exact)")
    p.add_argument("--kv-cache-dtype", default=None, choices=("float32", "float16"),
                   help="the KV cache's dtype (default: float16 for quantized weights at --act-bits 16/8 on the CPU, "
                        "else --dtype); float16 halves what attention reads at long context")
    p.add_argument("--compile", action="store_true",
                   help="decode steps through torch.compile, with CUDA graphs on CUDA, where lmforge's native CPU "
                        "step does not run them (CUDA; bf16/fp16 on the CPU); the first step compiles")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="a PEFT LoRA adapter folder, merged into the weights at load")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="print tokens as they come (default: on, off for beam search)")


def _prompt_source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt-file", metavar="FILE", default=None,
                   help="prompts from a file: .txt (one per line) or .jsonl (a \"prompt\" or \"text\" field)")
    p.add_argument("--dataset", metavar="FILE", default=None, help="prompts from a .jsonl, .csv or .parquet column")
    p.add_argument("--column", default="text", help="the --dataset column holding the prompts (default: text)")
    p.add_argument("--bucket-size", type=int, default=None, metavar="N",
                   help="sort prompts by length and pad each batch to a multiple of N tokens")


def _speculative_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draft-model", default=None, metavar="MODEL",
                   help="speculative decoding with this smaller model (same tokenizer) as the draft")
    p.add_argument("--draft", choices=("ngram", "self-int4"), default=None,
                   help="speculative decoding drafted by prompt lookup (ngram) or by the model in int4 (self-int4)")
    p.add_argument("--speculate-k", type=int, default=4, metavar="K", help="draft tokens per step (default 4)")


def draft_spec(args: argparse.Namespace):
    """The --draft / --draft-model choice, or None."""
    if args.draft and args.draft_model:
        raise LmforgeError("--draft contradicts --draft-model; give one draft")
    return args.draft_model or args.draft


def read_prompts(args: argparse.Namespace) -> list[str] | None:
    """Prompts from --prompt-file or --dataset (None when neither is given)."""
    from .prompts import read_dataset, read_prompt_file

    if args.prompt_file and args.dataset:
        raise LmforgeError("--prompt-file contradicts --dataset; give one prompt source")
    if args.prompt_file:
        return read_prompt_file(args.prompt_file)
    if args.dataset:
        return read_dataset(args.dataset, args.column)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="Run decoder-only LLMs fast.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="continue raw text (no chat template)")
    g.add_argument("prompts", nargs="*", metavar="PROMPT")
    _generation_flags(g)
    _prompt_source_flags(g)
    g.add_argument("--batch-size", type=int, default=1, metavar="B", help="prompts per batch (default 1)")
    g.add_argument("--output", metavar="FILE.jsonl", default=None,
                   help="write one JSON object per prompt (prompt, completion, token counts, timings)")
    _speculative_flags(g)

    c = sub.add_parser("chat", help="chat with the model's chat template (interactive without PROMPT)")
    c.add_argument("prompt", nargs="?", default=None, metavar="PROMPT")
    c.add_argument("--system", default=None, help="a system message")
    _generation_flags(c)

    i = sub.add_parser("info", help="describe a model: architecture, parameters, context, tokenizer, files")
    i.add_argument("model", nargs="?", default=None, metavar="MODEL")

    from .bench.command import add_parser as add_bench_parser
    add_bench_parser(sub)

    from .evaluate.command import add_parser as add_eval_parser
    add_eval_parser(sub)

    from .quant.command import add_parser as add_quantize_parser
    add_quantize_parser(sub)
    return parser


def generation_kwargs(args: argparse.Namespace) -> dict:
    """Translate and cross-check the generation flags."""
    sampling = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p") if getattr(args, k) is not None}
    if args.greedy and sampling:
        raise LmforgeError(f"--greedy contradicts --{next(iter(sampling)).replace('_', '-')}: "
                           "greedy decoding does not sample; drop one of them")
    if args.num_beams and args.num_beams > 1 and sampling:
        raise LmforgeError("--num-beams contradicts sampling flags (--temperature/--top-k/--top-p); "
                           "beam search is deterministic")
    if args.num_beams and args.num_beams > 1 and args.stream:
        raise LmforgeError("--stream cannot be used with beam search (--num-beams > 1): "
                           "the best beam is known only at the end; use --no-stream")
    if ("top_k" in sampling or "top_p" in sampling) and "temperature" not in sampling:
        sampling["temperature"] = 1.0  # top-k/top-p imply sampling
    kw = dict(sampling)
    for name in ("min_new_tokens", "repetition_penalty", "num_beams", "length_penalty", "early_stopping", "seed"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    kw["max_new_tokens"] = args.max_new_tokens or 128
    if args.stop:
        kw["stop"] = args.stop
    return kw


def _print_stream(pieces) -> str:
    text = ""
    for piece in pieces:
        text += piece
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return text


def cmd_generate(args) -> int:
    import time

    from .api import LLM
    from .prompts import run_prompts, write_jsonl

    kw = generation_kwargs(args)
    draft = draft_spec(args)
    sourced = read_prompts(args)
    if sourced is not None and args.prompts:
        raise LmforgeError("give prompts either as arguments or with --prompt-file/--dataset, not both")
    prompts = sourced if sourced is not None else args.prompts
    if not prompts:
        raise LmforgeError("no prompt: give PROMPT arguments, --prompt-file FILE or --dataset FILE")
    if draft and args.batch_size != 1:
        raise LmforgeError(f"speculative decoding runs one prompt at a time; use --batch-size 1 "
                           f"(got {args.batch_size}) or drop --draft/--draft-model")
    if args.output:
        from .bench.report import check_writable
        check_writable(args.output, "--output")
    llm = LLM(args.model, dtype=args.dtype, device=args.device, threads=args.threads, quantize=args.quantize,
              adapters=args.adapter, dequantize=args.dequantize, act_bits=args.act_bits,
              kv_cache_dtype=args.kv_cache_dtype, compile=args.compile)
    spec = llm.speculator(draft, args.speculate_k) if draft else None
    batched = sourced is not None or args.output or args.batch_size != 1 or args.bucket_size
    stream = not batched and (args.stream if args.stream is not None else kw.get("num_beams", 1) == 1)
    start = time.perf_counter()
    if batched:
        records = run_prompts(llm, prompts, llm._gen(**kw), args.batch_size, args.bucket_size, spec)
        if args.output:
            write_jsonl(args.output, records)
        else:
            for r in records:
                print(r["prompt"] + r["completion"])
    elif stream:
        for prompt in prompts:
            sys.stdout.write(prompt)
            _print_stream(llm.stream(prompt, draft=spec, **kw))
    else:
        for prompt, text in zip(prompts, llm.generate(prompts, draft=spec, **kw)):
            print(prompt + text)
    if spec is not None:
        from .generation.speculative import summary_line
        spec_s = time.perf_counter() - start
        start = time.perf_counter()
        for p in prompts:  # plain decoding of the same prompts, one at a time as speculative decoding ran them
            llm.generate_ids([llm.tokenizer.encode(p)], llm._gen(**kw))
        print(summary_line(draft, spec.k, spec.stats, spec_s, time.perf_counter() - start), file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from .api import LLM

    kw = generation_kwargs(args)
    stream = args.stream if args.stream is not None else kw.get("num_beams", 1) == 1
    llm = LLM(args.model, dtype=args.dtype, device=args.device, threads=args.threads, quantize=args.quantize,
              adapters=args.adapter, dequantize=args.dequantize, act_bits=args.act_bits,
              kv_cache_dtype=args.kv_cache_dtype, compile=args.compile)
    history = [{"role": "system", "content": args.system}] if args.system else []

    def reply(user: str) -> str:
        history.append({"role": "user", "content": user})
        if stream:
            text = _print_stream(llm.chat_stream(history, **kw))
        else:
            text = llm.chat(history, **kw)
            print(text)
        history.append({"role": "assistant", "content": text})
        return text

    if args.prompt is not None:
        reply(args.prompt)
        return 0
    print("Chatting with the model. Empty line or Ctrl-D to quit.", file=sys.stderr)
    while True:
        try:
            user = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not user.strip():
            return 0
        reply(user)


def cmd_info(args) -> int:
    from .inspect import describe

    for key, value in describe(args.model).items():
        print(f"{key:>16}: {value}")
    return 0


def cmd_bench(args) -> int:
    from .bench.command import run

    return run(args)


def cmd_eval(args) -> int:
    from .evaluate.command import run

    return run(args)


def cmd_quantize(args) -> int:
    from .quant.command import run

    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__
        print(f"lmforge {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return {"generate": cmd_generate, "chat": cmd_chat, "info": cmd_info,
                "bench": cmd_bench, "eval": cmd_eval, "quantize": cmd_quantize}[args.command](args)
    except LmforgeError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
