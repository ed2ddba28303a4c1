"""The `lmforge bench` subcommand: flags, validation, and the run from model to report."""
from __future__ import annotations

import argparse
import sys

from ..errors import LmforgeError

COMPARE = ("hf", "llamacpp")


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="benchmark latency and throughput (a sweep, one row per case)",
                       description="Benchmark generation over the cross product of the sweep flags. "
                                   "Metrics are defined in docs/benchmarking.md.")
    b.add_argument("--model", "-m", default=None,
                   help="HF folder, .gguf file or alias (default: smollm2-135m-instruct)")
    b.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    b.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    b.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    b.add_argument("--quantize", default=None, metavar="SPEC",
                   help="quantize at load time (RTN): int8, fp8, int4 (group 128), int4-g64, int4-g128-asym, ...")
    b.add_argument("--dequantize", action="store_true",
                   help="expand a GGUF file's Q4_0/Q4_1/Q4_K/Q5_0/Q5_K/Q6_K/Q8_0 weights to --dtype instead of running them natively")
    b.add_argument("--act-bits", type=int, choices=(32, 16, 8), default=16,
                   help="how the native kernels of quantized weights take decode activations: 16 (default, ~15 bits), "
                        "8 (llama.cpp's int8 rounding, fastest) or 32 (fp32, exact)")
    b.add_argument("--kv-cache-dtype", default=None, choices=("float32", "float16"),
                   help="the KV cache's dtype (default: float16 for quantized weights at --act-bits 16/8 on the CPU, "
                        "else --dtype); float16 halves what attention reads at long context")
    b.add_argument("--compile", action="store_true",
                   help="decode steps through torch.compile, with CUDA graphs on CUDA, where lmforge's native CPU "
                        "step does not run them (CUDA; bf16/fp16 on the CPU); warm-up iterations compile")
    b.add_argument("--random-weights", action="store_true",
                   help="--model is a folder with a Hugging Face config.json: benchmark that shape with random "
                        "weights (use with --random-prompt when the folder has no tokenizer)")
    b.add_argument("--input-tokens", "-p", type=int, nargs="+", default=[512], metavar="N",
                   help="prompt lengths in tokens (default 512)")
    b.add_argument("--max-new-tokens", "-n", type=int, nargs="+", default=[128], metavar="N",
                   help="generated tokens per sequence, exactly (EOS ignored; default 128)")
    b.add_argument("--batch-size", "-b", type=int, nargs="+", default=[1], metavar="B", help="(default 1)")
    b.add_argument("--depth", "-d", type=int, nargs="+", default=[0], metavar="D",
                   help="tokens of context already in the KV cache before the input (default 0)")
    b.add_argument("--num-iter", type=int, default=5, help="timed iterations per case (default 5)")
    b.add_argument("--num-warmup", type=int, default=1, help="untimed warm-up iterations per case (default 1)")
    b.add_argument("--greedy", action="store_true", help="greedy decoding (the default)")
    b.add_argument("--temperature", type=float, default=None, help="sample with this temperature instead")
    b.add_argument("--num-beams", type=int, default=1, help="beam search with B beams (end-to-end time only)")
    b.add_argument("--seed", type=int, default=0, help="seed for random prompts and sampling (default 0)")
    b.add_argument("--random-prompt", action="store_true",
                   help="random token ids instead of the prompt text that ships with lmforge")
    b.add_argument("--compare", nargs="+", choices=COMPARE, default=[], metavar="BACKEND",
                   help="also run the cases through: hf (transformers generate), llamacpp (llama-cpp-python)")
    b.add_argument("--roofline", action="store_true",
                   help="measure the machine's memory bandwidth and matmul throughput again, print them, exit")
    b.add_argument("--no-roofline", action="store_true",
                   help="do not measure the machine's limits when they are not cached (no %% of peak)")
    b.add_argument("--output-json", metavar="FILE", help="write one JSON object per case and backend")
    b.add_argument("--output-csv", metavar="FILE", help="write one CSV row per case and backend")
    b.add_argument("--plot", metavar="FILE.png", help="plot latency distributions and throughput (matplotlib)")
    from ..cli import _prompt_source_flags, _speculative_flags
    _speculative_flags(b)
    _prompt_source_flags(b)


def check_args(args: argparse.Namespace) -> None:
    from .runner import check_values

    check_values("--input-tokens", args.input_tokens, 1)
    check_values("--max-new-tokens", args.max_new_tokens, 1)
    check_values("--batch-size", args.batch_size, 1)
    check_values("--depth", args.depth, 0)
    check_values("--num-iter", [args.num_iter], 1)
    check_values("--num-warmup", [args.num_warmup], 0)
    check_values("--num-beams", [args.num_beams], 1)
    if args.temperature is not None and args.temperature <= 0:
        raise LmforgeError(f"--temperature must be > 0 (got {args.temperature}); leave it out for greedy decoding")
    if args.greedy and args.temperature is not None:
        raise LmforgeError("--greedy contradicts --temperature: greedy decoding does not sample; drop one of them")
    if args.num_beams > 1 and args.temperature is not None:
        raise LmforgeError("--num-beams contradicts --temperature: beam search is deterministic; drop one of them")
    if args.threads is not None and args.threads < 1:
        raise LmforgeError(f"--threads must be at least 1 (got {args.threads})")
    if args.roofline and args.no_roofline:
        raise LmforgeError("--roofline contradicts --no-roofline; drop one of them")


def _progress(message: str) -> None:
    print(f"lmforge bench: {message}", file=sys.stderr, flush=True)


def print_roofline(roof: dict) -> None:
    print(f"read bandwidth:  {roof['read_bandwidth_bytes_per_s'] / 1e9:8.2f} GB/s "
          f"(sum over {roof['buffer_bytes'] >> 20} MiB, best of 5)")
    print(f"copy bandwidth:  {roof['copy_bandwidth_bytes_per_s'] / 1e9:8.2f} GB/s (read + write)")
    print(f"fp32 matmul:     {roof['fp32_matmul_flops_per_s'] / 1e9:8.2f} GFLOP/s "
          f"({roof['matmul_n']}^3, {roof['threads']} threads)")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    import torch

    from ..loader import parse_device
    from . import report, roofline, runner
    from .env import environment

    device = parse_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.roofline:
        _progress("measuring memory bandwidth and matmul throughput")
        print_roofline(roofline.load_or_measure(device, refresh=True))
        return 0
    if args.plot:
        report.require_matplotlib()
    for flag, path in (("--output-json", args.output_json), ("--output-csv", args.output_csv),
                       ("--plot", args.plot)):
        if path:
            report.check_writable(path, flag)

    cases = runner.expand_cases(args.input_tokens, args.max_new_tokens, args.batch_size, args.depth)
    settings = runner.Settings(num_iter=args.num_iter, num_warmup=args.num_warmup, num_beams=args.num_beams,
                               temperature=args.temperature or 0.0, seed=args.seed,
                               random_prompt=args.random_prompt)
    roof = None
    if not args.no_roofline:
        roof = roofline.load_or_measure(
            device, on_measure=lambda: _progress("measuring this machine's limits once (cached for next time)"))

    from ..api import LLM
    from ..cli import draft_spec, read_prompts
    draft, prompts = draft_spec(args), read_prompts(args)
    if draft and prompts is not None:
        raise LmforgeError("--draft/--draft-model apply to the length sweep, not to --prompt-file/--dataset; "
                           "drop one of them")
    _progress(f"loading {args.model or 'the default model'}")
    llm = LLM(args.model, dtype=args.dtype, device=device, threads=args.threads, quantize=args.quantize,
              dequantize=args.dequantize, act_bits=args.act_bits, kv_cache_dtype=args.kv_cache_dtype,
              compile=args.compile, random_weights=args.random_weights)
    if prompts is not None:
        return run_dataset(llm, prompts, args, settings)
    runner.check_context(cases, llm.config.max_seq_len)
    env = environment(llm.device, llm.dtype, quantization_label(llm, args), decode_step_label(llm),
                      kernels_label(llm), llm.engine.kv_dtype)
    speculator = llm.speculator(draft, args.speculate_k) if draft else None
    results = runner.run_bench(llm, cases, settings, env, roof, tuple(dict.fromkeys(args.compare)), _progress,
                               speculator=speculator, draft=draft)

    sys.stdout.write(report.markdown(results))
    if args.output_json:
        report.write_atomic(args.output_json, report.to_json(results))
    if args.output_csv:
        report.write_atomic(args.output_csv, report.to_csv(results))
    if args.plot:
        report.write_atomic(args.plot, report.plot_png(results))
    return 0


def run_dataset(llm, prompts: list[str], args: argparse.Namespace, settings) -> int:
    """Real prompts in batches of the first --batch-size, in input order and with --bucket-size."""
    from . import dataset, report

    gen = settings.generation_config(args.max_new_tokens[0])
    results = dataset.run_dataset_bench(llm, prompts, gen, args.batch_size[0], args.bucket_size, _progress)
    sys.stdout.write(dataset.markdown(results))
    if args.output_json:
        report.write_atomic(args.output_json, report.json.dumps(results, indent=1) + "\n")
    return 0


def decode_step_label(llm) -> str:
    """How lmforge runs a decode step: one native call (models/native_step.py) or op by op, and why."""
    if llm.engine.native_plan() is not None:
        return "one native call per step"
    if llm.engine.compile:
        graphs = ", CUDA graphs" if llm.device.type == "cuda" else ""
        return f"torch.compile{graphs} ({llm.engine.native_plan_reason})"
    return f"op by op ({llm.engine.native_plan_reason})"


def kernels_label(llm) -> str | None:
    """Which CPU kernels ran lmforge's ops (None off the CPU)."""
    if llm.device.type != "cpu":
        return None
    from .. import kernels

    return kernels.describe()


def quantization_label(llm, args) -> str | None:
    """What the benchmarked weights are: the file's quantization and how it runs, or the --quantize spec."""
    acts = f"decode activations {ACT_LABELS[args.act_bits]}"
    if args.quantize:
        return f"{args.quantize} (RTN at load); {acts}"
    stored = llm.source.describe().get("quantization")
    if stored and llm.source.format == "gguf":
        src = llm.source
        if args.dequantize or not src.native_types:
            return f"{stored}; dequantized to {args.dtype}"
        runs = f"{'/'.join(sorted(src.native_types))} run natively"
        if src.dequantized_types:  # a type without a native layout, or a fused module with one
            runs += f", {'/'.join(sorted(src.dequantized_types))} dequantized to {args.dtype}"
        return f"{stored}; {runs}, {acts}"
    return stored


ACT_LABELS = {32: "fp32", 16: "int8 x 2 (~15 bits)", 8: "int8"}
