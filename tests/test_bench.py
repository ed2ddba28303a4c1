"""`lmforge bench`: metric maths on synthetic timings, exact prompt lengths, the result schema, and a
tiny end-to-end run on stories260K. No assertion here depends on how fast anything ran."""
import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import SHARED, need
from lmforge.bench import metrics, report, roofline, runner
from lmforge.bench.metrics import Timing
from lmforge.cli import main
from lmforge.errors import LmforgeError

# ---------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("samples", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 2.0, 3.0], list(np.random.default_rng(0).random(101))])
@pytest.mark.parametrize("q", [0, 50, 90, 99, 100])
def test_percentile_matches_numpy(samples, q):
    assert metrics.percentile(samples, q) == pytest.approx(np.percentile(samples, q))


def test_summary():
    s = metrics.summary([float(x) for x in range(1, 101)])
    assert s["mean"] == pytest.approx(50.5)
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert metrics.summary([]) is None


def test_first_token_is_ttft_not_tpot():
    t = Timing(start=10.0, end=10.9, token_times=(10.5, 10.6, 10.8, 10.9))
    assert metrics.ttft(t) == pytest.approx(0.5)
    assert metrics.next_token_latencies(t) == pytest.approx([0.1, 0.2, 0.1])  # 4 tokens, 3 gaps
    assert metrics.e2e_latency(t) == pytest.approx(0.9)


def test_case_metrics_on_synthetic_timings():
    # two iterations, 4 new tokens, batch 2, 100 prompt tokens; TTFT 0.5 s and 0.7 s; gaps 0.1 and 0.3 s
    timings = [Timing(0.0, 0.8, (0.5, 0.6, 0.7, 0.8)), Timing(5.0, 6.6, (5.7, 6.0, 6.3, 6.6))]
    m = metrics.case_metrics(timings, batch_size=2, context_tokens=100, new_tokens=4, weight_bytes=1000,
                             kv_token_bytes=10, peak_bandwidth=1e5)
    assert m["ttft_s"]["mean"] == pytest.approx(0.6)
    assert m["tpot_s"]["mean"] == pytest.approx(0.2)          # (3 * 0.1 + 3 * 0.3) / 6
    assert m["tpot_s"]["p50"] == pytest.approx(0.2)
    assert m["e2e_latency_s"]["mean"] == pytest.approx(1.2)
    assert m["prefill_tokens_per_s"] == pytest.approx(2 * 100 / 0.6)
    assert m["decode_tokens_per_s_per_sequence"] == pytest.approx(5.0)
    assert m["decode_tokens_per_s_aggregate"] == pytest.approx(10.0)  # batch 2: twice per sequence
    step = 1000 + 10 * 2 * (100 + 4 / 2)                       # weights + KV of both rows at mean depth
    assert m["decode_step_bytes"] == pytest.approx(step)
    assert m["bandwidth_bytes_per_s"] == pytest.approx(step / 0.2)
    assert m["bandwidth_percent_of_peak"] == pytest.approx(100 * step / 0.2 / 1e5)


def test_mean_decode_context_counts_attended_positions():
    context, new = 7, 5   # decode steps k = 1..4 attend over context + k positions
    assert metrics.mean_decode_context(context, new) == pytest.approx(np.mean([context + k for k in range(1, new)]))


def test_unstreamed_timings_have_only_end_to_end():
    m = metrics.case_metrics([Timing(0.0, 2.0, ())], 1, 10, 4, 100, 1, None)
    assert m["e2e_latency_s"]["mean"] == 2.0
    assert m["ttft_s"] is None and m["tpot_s"] is None and m["decode_tokens_per_s_aggregate"] is None


def test_speedup_direction():
    ours = {"decode_tokens_per_s_aggregate": 30.0, "ttft_s": {"mean": 0.1}, "e2e_latency_s": {"mean": 1.0}}
    theirs = {"decode_tokens_per_s_aggregate": 10.0, "ttft_s": {"mean": 0.4}, "e2e_latency_s": {"mean": 3.0}}
    assert metrics.speedup(ours, theirs) == pytest.approx({"decode": 3.0, "ttft": 4.0, "e2e": 3.0})


def test_kv_bytes_per_token():
    assert metrics.kv_bytes_per_token(n_layers=5, n_kv_heads=4, head_dim=8, element_size=4) == 2 * 5 * 4 * 8 * 4


class _Tiny(nn.Module):
    def __init__(self, tied: bool):
        super().__init__()
        self.embed = nn.Embedding(100, 8)             # 3200 bytes
        self.proj = nn.Linear(8, 8, bias=False)       # 256 bytes
        self.head = nn.Linear(8, 100, bias=False)     # 3200 bytes
        self.register_buffer("scale", torch.ones(4))  # 16 bytes, persistent
        self.register_buffer("table", torch.ones(50), persistent=False)
        if tied:
            self.head.weight = self.embed.weight


@pytest.mark.parametrize("tied", [False, True])
def test_weight_bytes(tied):
    model = _Tiny(tied)
    assert metrics.weight_bytes(model) == 3200 + 256 + 16 + (0 if tied else 3200)
    # a decode step gathers embedding rows but reads the (possibly tied) head in full
    assert metrics.decode_weight_bytes(model) == 256 + 3200 + 16


# ---------------------------------------------------------------------------------- prompts

TOKENIZERS = ["gpt2", "gpt-neox-20b", "llama2-spm", "qwen2.5"]


def _shared_tokenizer(name):
    from tokenizers import Tokenizer as TK

    from lmforge.tokenizer import Tokenizer
    return Tokenizer(TK.from_file(str(need(SHARED / "tokenizers" / name / "tokenizer.json"))))


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("n", [1, 2, 17, 512, 6000])
def test_text_prompts_have_exact_length(name, n):
    tok = _shared_tokenizer(name)
    rows = runner.text_prompts(tok, n, batch_size=3)
    assert [len(r) for r in rows] == [n, n, n]
    prefix = runner.special_prefix(tok, "hello")
    assert all(r[:len(prefix)] == prefix[:n] for r in rows)
    if n > len(prefix) + 1:
        assert rows[0] != rows[1] != rows[2]  # distinct rows


def test_text_prompts_stories_keeps_bos(stories):
    from lmforge.io.hf import HFSource
    tok = HFSource(stories).tokenizer()
    rows = runner.text_prompts(tok, 300, batch_size=2)
    assert [len(r) for r in rows] == [300, 300]
    assert runner.special_prefix(tok, "hi") == [1] and rows[0][0] == rows[1][0] == 1


def test_prompt_text_ships_with_package():
    assert len(runner.prompt_text().split()) > 2000


def test_random_prompts_are_seeded():
    a = runner.random_prompts(512, 40, 2, seed=3)
    assert [len(r) for r in a] == [40, 40] and a == runner.random_prompts(512, 40, 2, seed=3)
    assert a != runner.random_prompts(512, 40, 2, seed=4)
    assert all(0 <= t < 512 for r in a for t in r)


def test_cases_and_context_check():
    cases = runner.expand_cases([32, 128], [16], [1, 4], [0, 64])
    assert len(cases) == 8 and cases[0] == runner.Case(1, 32, 16, 0)
    assert runner.Case(4, 128, 16, 64).context_tokens == 192
    runner.check_context(cases, 208)  # 64 + 128 + 16 fits exactly
    with pytest.raises(LmforgeError, match="does not fit the model's context window of 207"):
        runner.check_context(cases, 207)


# --------------------------------------------------------------------------------- roofline

def test_roofline_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path))
    calls = []

    def fake(device):
        calls.append(device)
        return {"read_bandwidth_bytes_per_s": 1e10}

    cpu = torch.device("cpu")
    assert roofline.load_or_measure(cpu, measure_fn=fake) == {"read_bandwidth_bytes_per_s": 1e10}
    assert roofline.cache_path(cpu).parent == tmp_path and roofline.cache_path(cpu).exists()
    roofline.load_or_measure(cpu, measure_fn=fake)
    assert len(calls) == 1  # second call read the cache
    roofline.load_or_measure(cpu, refresh=True, measure_fn=fake)
    assert len(calls) == 2


def test_roofline_probes_return_positive_rates():
    cpu = torch.device("cpu")
    buffer = torch.ones(1 << 18)
    assert roofline.read_bandwidth(buffer, repeats=1) > 0
    assert roofline.copy_bandwidth(buffer, repeats=1) > 0
    assert roofline.matmul_flops(cpu, n=32, repeats=1) > 0


# ------------------------------------------------------------------------- end to end (CLI)

RESULT_KEYS = {"schema", "backend", "case", "model", "env", "roofline", "metrics", "memory", "samples",
               "speedup_of_lmforge"}
ENV_KEYS = {"lmforge_version", "git_commit", "torch_version", "cpu", "cpu_isa", "threads", "device", "gpu",
            "dtype", "quantization", "decode_step", "date"}


def test_bench_end_to_end(capsys, tmp_path, monkeypatch, stories):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    cpu = torch.device("cpu")
    (tmp_path / "cache").mkdir()
    roofline.cache_path(cpu).write_text(json.dumps({"read_bandwidth_bytes_per_s": 1e10,
                                                    "fp32_matmul_flops_per_s": 1e11, "date": "today"}))
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    code = main(["bench", "--model", str(stories), "--input-tokens", "5", "9", "--max-new-tokens", "3",
                 "--batch-size", "1", "2", "--depth", "0", "4", "--num-iter", "1", "--num-warmup", "0",
                 "--output-json", str(out_json), "--output-csv", str(out_csv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads(out_json.read_text())
    assert len(results) == 8  # 2 inputs x 2 batch sizes x 2 depths
    for r in results:
        assert set(r) == RESULT_KEYS and r["schema"] == "lmforge-bench/1" and r["backend"] == "lmforge"
        assert ENV_KEYS <= set(r["env"])
        assert r["env"]["decode_step"] == "one native call per step"  # stories260K is a Llama
        assert r["env"]["kernels"].startswith("native (-march=")
        case = r["case"]
        assert case["context_tokens"] == case["depth"] + case["input_tokens"]
        assert len(r["samples"]["ttft_s"]) == 1 and len(r["samples"]["e2e_s"]) == 1
        assert [len(t) for t in r["samples"]["token_times_s"]] == [3]  # exactly max_new_tokens steps
        m = r["metrics"]
        for key in ("ttft_s", "tpot_s", "e2e_latency_s"):
            assert set(m[key]) == {"mean", "p50", "p90", "p99"}
        assert m["bandwidth_percent_of_peak"] is not None
        assert m["decode_tokens_per_s_aggregate"] == pytest.approx(
            case["batch_size"] * m["decode_tokens_per_s_per_sequence"])
        assert r["model"]["parameters"] > 0 and r["model"]["kv_bytes_per_token"] == 2 * 5 * 4 * 8 * 4
        assert r["memory"]["peak_rss_bytes"] > 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [row["label"] for row in rows] == [r["case"]["label"] for r in results]
    table = [line for line in captured.out.splitlines() if line.startswith("| lmforge")]
    assert len(table) == 8 and "b2 pp9@d4 tg3" in captured.out
    assert "[8/8]" in captured.err  # progress goes to stderr
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_bench_counts_the_kv_cache_it_runs(capsys, tmp_path, stories):
    """Quantized weights at rounded activations keep an fp16 cache: the record and the bytes a step
    reads say so; --kv-cache-dtype float32 doubles the cache's bytes."""
    for extra, dtype, size in (([], "float16", 2), (["--kv-cache-dtype", "float32"], "float32", 4)):
        out = tmp_path / f"{dtype}.json"
        code = main(["bench", "--model", str(stories), "--quantize", "int8", "-p", "5", "-n", "2", "--num-iter", "1",
                     "--num-warmup", "0", "--no-roofline", "--output-json", str(out), *extra])
        assert code == 0, capsys.readouterr().err
        (r,) = json.loads(out.read_text())
        assert r["env"]["kv_cache_dtype"] == dtype
        assert r["model"]["kv_bytes_per_token"] == 2 * 5 * 4 * 8 * size


def test_bench_random_prompt_without_roofline(capsys, tmp_path, monkeypatch, stories):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["bench", "--model", str(stories), "-p", "4", "-n", "2", "--num-iter", "1", "--num-warmup", "0",
                 "--random-prompt", "--no-roofline", "--temperature", "0.8", "--output-json", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    r = json.loads((tmp_path / "r.json").read_text())[0]
    assert r["roofline"] is None and r["metrics"]["bandwidth_percent_of_peak"] is None
    assert r["case"]["prompt"] == "random" and r["case"]["decoding"] == "sample"
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("script,needle", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGILL)", "crashed with SIGILL in a test run: the llama-cpp"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "crashed with SIGSEGV in a test run"),
    ("import sys; sys.exit('llama_load_model_from_file: failed to load model')", "failed in a test run (llama_load"),
    ("import sys; assert sys.argv[1].endswith('m.gguf') and sys.argv[2] == '3'", None),
])
def test_llamacpp_probe_names_a_crash(monkeypatch, tmp_path, script, needle):
    """--compare llamacpp first runs llama.cpp in a child process, so that a build that crashes on this
    machine (SIGILL from AMX in a VM) is named and skipped instead of killing the bench and its results."""
    monkeypatch.setattr(runner, "LLAMACPP_PROBE", script)
    failure = runner.llamacpp_probe(tmp_path / "m.gguf", 3)
    assert failure is None if needle is None else needle in failure


def test_markdown_marks_baseline_speedup():
    r = {"backend": "hf", "case": {"label": "b1 pp8 tg8"}, "memory": {"peak_rss_bytes": 1 << 20},
         "metrics": metrics.case_metrics([Timing(0.0, 0.3, (0.1, 0.2, 0.3))], 1, 8, 3, 100, 1, None),
         "speedup_of_lmforge": {"decode": 2.0, "ttft": 1.5, "e2e": 1.8}}
    assert report.table_row(r)[-1] == "2.00× decode, 1.50× TTFT"


@pytest.mark.parametrize("flags,needle", [
    (["--input-tokens", "0"], "--input-tokens must be at least 1"),
    (["--batch-size", "2", "0"], "--batch-size must be at least 1"),
    (["--depth", "-1"], "--depth must be at least 0"),
    (["--input-tokens", "500", "--max-new-tokens", "20"], "does not fit the model's context window of 512"),
    (["--greedy", "--temperature", "0.5"], "--greedy contradicts --temperature"),
    (["--output-json", "/no/such/folder/r.json"], "does not exist"),
])
def test_bad_flags_give_one_line_error(capsys, tmp_path, monkeypatch, stories, flags, needle):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path))
    code = main(["bench", "--model", str(stories), "--no-roofline", "--num-iter", "1", *flags])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("lmforge: error: ") and needle in err, err


@pytest.mark.parametrize("tied", [False, True])
def test_weight_bytes_of_a_block_quantized_embedding(tied):
    from lmforge.quant.linear import BlockEmbedding, BlockInt8Linear, TiedHead

    model = nn.Module()
    model.embed = BlockEmbedding(BlockInt8Linear(64, 100))  # 6400 bytes of codes + 100 x 2 fp16 scales x 2
    model.lm_head = TiedHead(model.embed) if tied else BlockInt8Linear(64, 100)
    table = 100 * 64 + 100 * 2 * 2
    assert metrics.weight_bytes(model) == table * (1 if tied else 2)
    # the embedding's rows are gathered; the head (the table itself when tied) is read in full
    assert metrics.decode_weight_bytes(model) == table
