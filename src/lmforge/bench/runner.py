"""Run benchmark cases: exact-length prompts, warm-up, timed iterations, one result per case.

lmforge is timed through ``Engine.generate``, the loop every lmforge command generates with: the
clock starts just before the engine is asked for the first token and is read each time it yields a
step's tokens. Baselines (Hugging Face transformers, llama-cpp-python) run the same cases on the
same token ids. Prompts are tokenized before the clock starts.
"""
from __future__ import annotations

import gc
import itertools
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..errors import LmforgeError
from ..generation.sampling import GenerationConfig
from ..inspect import parameter_count
from . import metrics
from .metrics import Timing

SCHEMA = "lmforge-bench/1"
PROMPT_FILE = "bench_prompt.txt"
ROW_STRIDE = 61  # row i of a batch starts i * ROW_STRIDE tokens into the prompt text: distinct rows


@dataclass(frozen=True)
class Case:
    """One point of the sweep."""
    batch_size: int
    input_tokens: int
    new_tokens: int
    depth: int = 0   # tokens of context before the input (see docs/benchmarking.md, "depth")

    @property
    def context_tokens(self) -> int:
        """Prompt length each sequence is prefilled with: depth + input tokens."""
        return self.depth + self.input_tokens

    @property
    def label(self) -> str:
        depth = f"@d{self.depth}" if self.depth else ""
        return f"b{self.batch_size} pp{self.input_tokens}{depth} tg{self.new_tokens}"


def expand_cases(input_tokens, new_tokens, batch_sizes, depths) -> list[Case]:
    """The cross product, batch size outermost, then depth, input length, output length."""
    return [Case(b, p, n, d) for b, d, p, n in itertools.product(batch_sizes, depths, input_tokens, new_tokens)]


def check_values(name: str, values, minimum: int) -> None:
    bad = [v for v in values if v < minimum]
    if bad:
        raise LmforgeError(f"{name} must be at least {minimum} (got {bad[0]})")


def check_context(cases: list[Case], context_window: int) -> None:
    """Every case must fit in the context window without the engine shortening its output."""
    for c in cases:
        if c.context_tokens + c.new_tokens > context_window:
            depth = f" + --depth {c.depth}" if c.depth else ""
            raise LmforgeError(f"--input-tokens {c.input_tokens}{depth} + --max-new-tokens {c.new_tokens} = "
                               f"{c.context_tokens + c.new_tokens} tokens does not fit the model's context "
                               f"window of {context_window} tokens; use smaller values")


@dataclass(frozen=True)
class Settings:
    num_iter: int = 5
    num_warmup: int = 1
    num_beams: int = 1
    temperature: float = 0.0
    seed: int = 0
    random_prompt: bool = False

    @property
    def decoding(self) -> str:
        return "beam" if self.num_beams > 1 else "sample" if self.temperature > 0 else "greedy"

    def generation_config(self, new_tokens: int) -> GenerationConfig:
        """Output length forced: exactly new_tokens tokens, EOS ignored."""
        return GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True,
                                temperature=self.temperature, num_beams=self.num_beams, seed=self.seed)


# -------------------------------------------------------------------------------------- prompts

def prompt_text() -> str:
    """The prose that ships with lmforge for benchmark prompts."""
    return resources.files("lmforge").joinpath("data", PROMPT_FILE).read_text(encoding="utf-8")


def special_prefix(tokenizer, text: str) -> list[int]:
    """The ids the tokenizer puts before the text itself (e.g. BOS); [] when none."""
    bare = tokenizer.encode(text, add_special_tokens=False)
    full = tokenizer.encode(text)
    k = len(full) - len(bare)
    return full[:k] if k > 0 and full[k:] == bare else []


def text_prompts(tokenizer, n_tokens: int, batch_size: int, text: str | None = None) -> list[list[int]]:
    """batch_size prompts of exactly n_tokens ids each: the tokenizer's special prefix (BOS), then a
    window of the prompt text's ids (the text repeated when too short), row i starting ROW_STRIDE*i
    ids further into it."""
    text = text if text is not None else prompt_text()
    prefix = special_prefix(tokenizer, text)[:n_tokens]
    unit = tokenizer.encode(text + "\n\n", add_special_tokens=False)
    if not unit:
        raise LmforgeError("the tokenizer turns the benchmark prompt text into no tokens; use --random-prompt")
    body = n_tokens - len(prefix)
    need = body + ROW_STRIDE * (batch_size - 1)
    stream = unit * -(-need // len(unit))  # ceil division: enough repetitions
    return [prefix + stream[i * ROW_STRIDE:i * ROW_STRIDE + body] for i in range(batch_size)]


def random_prompts(vocab_size: int, n_tokens: int, batch_size: int, seed: int) -> list[list[int]]:
    """batch_size prompts of n_tokens ids drawn uniformly from the vocabulary (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, n_tokens), generator=g).tolist()


# -------------------------------------------------------------------------------------- memory

def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (Linux: clear the peak RSS; CUDA: reset the allocator peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # no per-case peak here: peak_memory then reports the process's lifetime peak
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak resident set size of the process since reset_peak_memory, and peak CUDA memory."""
    rss = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    if rss is None:  # ru_maxrss: KiB on Linux, bytes on macOS; lifetime peak
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss *= 1 if sys.platform == "darwin" else 1024
    cuda = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"peak_rss_bytes": rss, "cuda_peak_bytes": cuda}


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# ------------------------------------------------------------------------------------- backends

class LmforgeBackend:
    """lmforge's Engine, the path `lmforge generate` uses."""
    name = "lmforge"

    def __init__(self, llm):
        self.llm = llm
        self.device = llm.device
        self.kv_dtype = llm.engine.kv_dtype
        self.sync = _synchronizer(llm.device)

    def supports(self, case: Case, settings: Settings) -> str | None:
        return None

    def run(self, prompts: list[list[int]], gen: GenerationConfig) -> Timing:
        if gen.num_beams > 1:  # beam search returns only finished beams: end-to-end time only
            start = time.perf_counter()
            self.llm.generate_ids(prompts, gen)
            self.sync()
            return Timing(start, time.perf_counter(), ())
        stamps = []
        # EOS is ignored and all rows have one length, so no EOS set and no padding id are needed
        start = time.perf_counter()
        for _ in self.llm.engine.generate(prompts, gen, frozenset(), 0):
            self.sync()
            stamps.append(time.perf_counter())
        return Timing(start, stamps[-1], tuple(stamps))

    def model_info(self) -> dict:
        model, src = self.llm.model, self.llm.source
        return {"source": str(src.path), "format": src.describe().get("format"),
                "random_weights": self.llm.random_weights,
                "architecture": self.llm.config.architecture,
                "parameters": parameter_count(self.llm.config),  # from the config: quantized weights are buffers
                "bytes": metrics.weight_bytes(model), "decode_weight_bytes": metrics.decode_weight_bytes(model),
                "file_bytes": sum(Path(f).stat().st_size for f in src.files)}


class SpeculativeBackend(LmforgeBackend):
    """lmforge with speculative decoding (batch size 1), timed like LmforgeBackend."""
    name = "lmforge-speculative"

    def __init__(self, llm, speculator):
        super().__init__(llm)
        self.speculator = speculator

    def supports(self, case: Case, settings: Settings) -> str | None:
        if case.batch_size != 1:
            return "speculative decoding runs batch size 1 only"
        if settings.num_beams > 1:
            return "speculative decoding does not do beam search"
        return None

    def run(self, prompts: list[list[int]], gen: GenerationConfig) -> Timing:
        stamps = []
        start = time.perf_counter()
        for _ in self.speculator.generate(prompts, gen, frozenset(), 0):
            self.sync()
            stamps.append(time.perf_counter())
        return Timing(start, stamps[-1], tuple(stamps))


class _Stamps:
    """A transformers streamer that only notes when each step's tokens arrive (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value):
        if self.prompt_seen:
            self.times.append(time.perf_counter())  # put() received a host copy: the step is done
        self.prompt_seen = True

    def end(self):
        pass


class HFBackend:
    """Hugging Face transformers `generate`, eager attention, the same weights (a GGUF is dequantized)."""
    name = "hf"

    def __init__(self, llm):
        try:
            import transformers
        except ImportError:
            raise LmforgeError("--compare hf needs Hugging Face transformers; install it with "
                               "`pip install transformers`") from None
        self.transformers = transformers
        self.device, self.sync = llm.device, _synchronizer(llm.device)
        self.kv_dtype = llm.dtype  # its dynamic cache holds the model's dtype
        self.path = Path(llm.source.path)
        where = {"gguf_file": self.path.name} if self.path.is_file() else {}
        folder = self.path.parent if self.path.is_file() else self.path
        dtype_key = "dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype"
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, attn_implementation="eager", **{dtype_key: llm.dtype}, **where)
        except Exception as e:  # transformers raises many types for files it cannot read
            raise LmforgeError(f"--compare hf: transformers cannot load {self.path} ({type(e).__name__}: {e}); "
                               "drop --compare hf for this model") from None
        self.model = model.to(self.device).eval()
        self.pad_id = llm.config.pad_token_id if llm.config.pad_token_id is not None else 0

    def supports(self, case: Case, settings: Settings) -> str | None:
        return None

    def run(self, prompts: list[list[int]], gen: GenerationConfig) -> Timing:
        ids = torch.tensor(prompts, dtype=torch.long, device=self.device)  # [B, P]: equal lengths
        config = self.transformers.GenerationConfig(
            max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.min_new_tokens, do_sample=gen.do_sample,
            temperature=gen.temperature if gen.do_sample else None, top_k=None, top_p=None,
            num_beams=gen.num_beams, pad_token_id=self.pad_id, eos_token_id=None)
        stamps = _Stamps() if gen.num_beams == 1 else None
        if gen.do_sample:
            torch.manual_seed(gen.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                      streamer=stamps)
        self.sync()
        end = time.perf_counter()
        if out.shape[1] - ids.shape[1] != gen.max_new_tokens:
            raise LmforgeError(f"--compare hf: transformers generated {out.shape[1] - ids.shape[1]} tokens "
                               f"instead of {gen.max_new_tokens}")
        return Timing(start, stamps.times[-1] if stamps else end, tuple(stamps.times) if stamps else ())

    def model_info(self) -> dict:
        return {"source": str(self.path), "format": "transformers",
                "architecture": type(self.model).__name__,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "bytes": metrics.weight_bytes(self.model),
                "decode_weight_bytes": metrics.decode_weight_bytes(self.model), "file_bytes": None}


class LlamaCppBackend:
    """The same GGUF file through llama-cpp-python (one sequence at a time, greedy)."""
    name = "llamacpp"

    device = torch.device("cpu")
    kv_dtype = torch.float16  # llama.cpp's default cache type

    def __init__(self, llm, n_ctx: int):
        from llama_cpp import Llama

        self.path = Path(llm.source.path)
        self.llama = Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=torch.get_num_threads(),
                           n_batch=min(n_ctx, 512), verbose=False)
        self.file_bytes = self.path.stat().st_size
        self.parameters = parameter_count(llm.config)

    def supports(self, case: Case, settings: Settings) -> str | None:
        if case.batch_size != 1:
            return "llama-cpp-python generates one sequence at a time (batch size 1 only)"
        if settings.decoding != "greedy":
            return "only greedy decoding is compared with llama-cpp-python"
        return None

    def run(self, prompts: list[list[int]], gen: GenerationConfig) -> Timing:
        self.llama.reset()  # no KV-cache reuse between iterations: every iteration prefills
        stamps = []
        start = time.perf_counter()
        for _ in self.llama.generate(prompts[0], temp=0.0, top_k=1, reset=True):
            stamps.append(time.perf_counter())
            if len(stamps) == gen.max_new_tokens:
                break
        return Timing(start, stamps[-1], tuple(stamps))

    def model_info(self) -> dict:
        # the quantized tensors make up nearly all of a GGUF file: its size stands in for the weight bytes
        return {"source": str(self.path), "format": "GGUF (llama.cpp)", "architecture": None,
                "parameters": self.parameters, "bytes": self.file_bytes,
                "decode_weight_bytes": self.file_bytes, "file_bytes": self.file_bytes}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


# A child process loads the file in llama.cpp and generates two tokens after an 8-token prompt: a
# llama-cpp-python build that crashes here (SIGILL from instructions the CPU or VM does not run, e.g.
# AMX tiles in a VM that does not give them; a segfault) would otherwise take lmforge's results with it.
LLAMACPP_PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=int(sys.argv[2]), n_batch=64, verbose=False)
for i, _ in enumerate(llm.generate(list(range(1, 9)), temp=0.0, top_k=1)):
    if i == 1:
        break
"""
PROBE_TIMEOUT_S = 600


def llamacpp_probe(path: Path, threads: int) -> str | None:
    """Why llama.cpp cannot run the file here (its test run in a child process crashed or failed), or
    None when it ran."""
    try:
        r = subprocess.run([sys.executable, "-c", LLAMACPP_PROBE, str(path), str(threads)], capture_output=True,
                           text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"llama.cpp generated no token within {PROBE_TIMEOUT_S} s in a test run"
    if r.returncode < 0:
        name = signal.Signals(-r.returncode).name
        hint = (": the llama-cpp-python build uses instructions this CPU (or VM) does not run; rebuild it for "
                "this machine, without GGML_NATIVE and with the features it has (e.g. AMX off)") if name == "SIGILL" else ""
        return f"llama.cpp crashed with {name} in a test run{hint}"
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        return f"llama.cpp failed in a test run ({last})"
    return None


def llamacpp_notice(llm) -> str | None:
    """Why --compare llamacpp cannot run here, or None when it can."""
    from ..loader import is_gguf

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "--compare llamacpp skipped: llama-cpp-python is not installed (pip install llama-cpp-python)"
    path = Path(llm.source.path)
    if not is_gguf(path):
        return "--compare llamacpp skipped: the model is not a .gguf file"
    failure = llamacpp_probe(path, torch.get_num_threads())
    return None if failure is None else f"--compare llamacpp skipped: {failure}"


# ------------------------------------------------------------------------------------- running

def time_case(backend, prompts: list[list[int]], case: Case, settings: Settings) -> tuple[list[Timing], dict]:
    """Warm-up iterations (discarded), then the timed ones; peak memory over the timed ones."""
    gen = settings.generation_config(case.new_tokens)
    for _ in range(settings.num_warmup):
        backend.run(prompts, gen)
    reset_peak_memory(backend.device)
    timings = []
    for _ in range(settings.num_iter):
        gc.collect()
        timings.append(backend.run(prompts, gen))
    return timings, peak_memory(backend.device)


def result_record(backend_name: str, case: Case, settings: Settings, model: dict, kv_token_bytes: int,
                  env: dict, roofline: dict | None, timings: list[Timing], memory: dict) -> dict:
    """One JSON-ready result: case, model, environment, metrics and the raw samples."""
    peak = roofline["read_bandwidth_bytes_per_s"] if roofline else None
    m = metrics.case_metrics(timings, case.batch_size, case.context_tokens, case.new_tokens,
                             model["decode_weight_bytes"], kv_token_bytes, peak)
    return {
        "schema": SCHEMA,
        "backend": backend_name,
        "case": {**asdict(case), "context_tokens": case.context_tokens, "label": case.label,
                 "num_iter": settings.num_iter, "num_warmup": settings.num_warmup,
                 "decoding": settings.decoding, "num_beams": settings.num_beams,
                 "temperature": settings.temperature, "seed": settings.seed,
                 "prompt": "random" if settings.random_prompt else "text"},
        "model": {**model, "kv_bytes_per_token": kv_token_bytes},
        "env": env,
        "roofline": roofline,
        "metrics": m,
        "memory": memory,
        "samples": {
            "ttft_s": [metrics.ttft(t) for t in timings] if all(t.streamed for t in timings) else [],
            "e2e_s": [metrics.e2e_latency(t) for t in timings],
            "token_times_s": [[x - t.start for x in t.token_times] for t in timings],
        },
        "speedup_of_lmforge": None,
    }


def make_prompts(llm, case: Case, settings: Settings) -> list[list[int]]:
    if settings.random_prompt:
        return random_prompts(llm.config.vocab_size, case.context_tokens, case.batch_size, settings.seed)
    return text_prompts(llm.tokenizer, case.context_tokens, case.batch_size)


def run_backend(backend, llm, cases: list[Case], settings: Settings, env: dict, roofline: dict | None,
                progress: Callable[[str], None]) -> Iterator[tuple[Case, dict]]:
    """Time every case on one backend; yields (case, result) pairs."""
    cfg = llm.config
    kv = metrics.kv_bytes_per_token(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, backend.kv_dtype.itemsize)
    model = backend.model_info()
    for i, case in enumerate(cases, 1):
        why_not = backend.supports(case, settings)
        if why_not:
            progress(f"[{i}/{len(cases)}] {backend.name} {case.label}: skipped ({why_not})")
            continue
        prompts = make_prompts(llm, case, settings)  # tokenization stays outside the timed region
        progress(f"[{i}/{len(cases)}] {backend.name} {case.label}: {settings.num_warmup} warm-up + "
                 f"{settings.num_iter} timed iterations")
        timings, memory = time_case(backend, prompts, case, settings)
        yield case, result_record(backend.name, case, settings, model, kv, env, roofline, timings, memory)


def run_speculative(llm, speculator, draft: str, cases: list[Case], settings: Settings, env: dict,
                    roofline: dict | None, plain: dict, progress: Callable[[str], None]) -> Iterator[dict]:
    """Every case again with speculative decoding; each result carries the acceptance statistics of
    its iterations (warm-up included) and its speedup over plain decoding in `plain` (this run)."""
    from ..generation.speculative import SpecStats

    backend = SpeculativeBackend(llm, speculator)
    for case, result in run_backend(backend, llm, cases, settings, env, roofline, progress):
        result["speculative"] = {"draft": draft, "k": speculator.k, **speculator.stats.as_dict(),
                                 "speedup_over_plain": metrics.speedup(result["metrics"], plain[case]["metrics"])}
        speculator.stats = SpecStats()  # the next case counts from zero
        yield result


def run_bench(llm, cases: list[Case], settings: Settings, env: dict, roofline: dict | None,
              compare: tuple[str, ...] = (), progress: Callable[[str], None] = lambda msg: None,
              speculator=None, draft: str | None = None) -> list[dict]:
    """lmforge on every case (and with speculative decoding when a speculator is given), then each
    baseline on every case (loaded only after lmforge's runs, so lmforge's peak memory does not
    include it). Baseline results carry lmforge's speedup over them."""
    ours = dict(run_backend(LmforgeBackend(llm), llm, cases, settings, env, roofline, progress))
    results = list(ours.values())
    if speculator is not None:
        results += run_speculative(llm, speculator, draft, cases, settings, env, roofline, ours, progress)
    for name in compare:
        if name == "llamacpp":
            notice = llamacpp_notice(llm)
            if notice:
                progress(notice)
                continue
            backend = LlamaCppBackend(llm, max(c.context_tokens + c.new_tokens for c in cases))
        else:
            progress("loading the model in Hugging Face transformers")
            backend = HFBackend(llm)
        for case, result in run_backend(backend, llm, cases, settings, env, roofline, progress):
            result["speedup_of_lmforge"] = metrics.speedup(ours[case]["metrics"], result["metrics"])
            results.append(result)
        del backend
        gc.collect()
    return results
