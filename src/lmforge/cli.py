"""`lmforge generate|chat|info`: thin shells over the LLM API."""
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
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="print tokens as they come (default: on, off for beam search)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="Run decoder-only LLMs fast.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="continue raw text (no chat template)")
    g.add_argument("prompts", nargs="+", metavar="PROMPT")
    _generation_flags(g)

    c = sub.add_parser("chat", help="chat with the model's chat template (interactive without PROMPT)")
    c.add_argument("prompt", nargs="?", default=None, metavar="PROMPT")
    c.add_argument("--system", default=None, help="a system message")
    _generation_flags(c)

    i = sub.add_parser("info", help="describe a model: architecture, parameters, context, tokenizer, files")
    i.add_argument("model", nargs="?", default=None, metavar="MODEL")
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
    from .api import LLM

    kw = generation_kwargs(args)
    stream = args.stream if args.stream is not None else kw.get("num_beams", 1) == 1
    llm = LLM(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
    if stream:
        for prompt in args.prompts:
            sys.stdout.write(prompt)
            _print_stream(llm.stream(prompt, **kw))
    else:
        for prompt, text in zip(args.prompts, llm.generate(args.prompts, **kw)):
            print(prompt + text)
    return 0


def cmd_chat(args) -> int:
    from .api import LLM

    kw = generation_kwargs(args)
    stream = args.stream if args.stream is not None else kw.get("num_beams", 1) == 1
    llm = LLM(args.model, dtype=args.dtype, device=args.device, threads=args.threads)
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
        return {"generate": cmd_generate, "chat": cmd_chat, "info": cmd_info}[args.command](args)
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
