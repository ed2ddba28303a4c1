"""lmforge eval: perplexity maths, the LAMBADA rule, the lm-eval adapter, comparisons, bad input."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from lmforge.cli import main
from lmforge.evaluate.compare import Outcome, Variant, comparison_rows, format_table, parse_compare
from lmforge.evaluate.lambada import lambada, read_lambada, split_last_word
from lmforge.evaluate.perplexity import perplexity, strided_nll, strided_windows
from lmforge.evaluate.scoring import continuation_logprobs, encode_pair

from conftest import ROOT

V = 256
EXAMPLE_TASK = ROOT / "examples" / "eval"


# ---------------------------------------------------------------------------------- fake models
def bigram_scorer(table: torch.Tensor):
    """A scorer whose logits at position p depend only on token p: table [V, V]."""
    return lambda tokens: table[tokens]  # [B, S] -> [B, S, V]


def byte_llm(scorer, max_seq_len=64):
    """A fake LLM over UTF-8 bytes (one token per byte, no BOS)."""
    tokenizer = SimpleNamespace(encode=lambda text: list(text.encode("utf-8")),
                                decode=lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    return SimpleNamespace(score=scorer, tokenizer=tokenizer, config=SimpleNamespace(max_seq_len=max_seq_len))


def direct_nll(table: torch.Tensor, ids: list[int]) -> float:
    logprobs = torch.log_softmax(table, dim=-1)
    return -sum(logprobs[a, b].item() for a, b in zip(ids, ids[1:]))


# ----------------------------------------------------------------------------------- perplexity
@pytest.mark.parametrize("n,context,stride", [(50, 16, 8), (50, 16, 1), (50, 16, 15), (16, 16, 8),
                                              (10, 16, 8), (17, 16, 4), (2, 2, 1), (101, 32, 7)])
def test_strided_windows_score_every_token_once(n, context, stride):
    windows = strided_windows(n, context, stride)
    scored = [t for w in windows for t in range(w.first_target, w.end)]
    assert scored == list(range(1, n))                      # each token after the first, once, in order
    for w in windows:
        assert w.end - w.begin <= context and w.first_target > w.begin
        assert w.first_target - w.begin >= min(context - stride, w.first_target)  # the promised context


def test_non_overlapping_windows_skip_window_starts_as_transformers_does():
    windows = strided_windows(40, 10, 10)
    scored = {t for w in windows for t in range(w.first_target, w.end)}
    assert scored == set(range(1, 40)) - {10, 20, 30}


def test_uniform_model_has_perplexity_of_the_vocabulary():
    llm = byte_llm(lambda tokens: torch.zeros(*tokens.shape, V))
    result = perplexity(llm, "hello world, " * 9, context_len=16, stride=8)
    assert result.tokens == len("hello world, " * 9) - 1
    assert result.perplexity == pytest.approx(V)
    assert result.bits_per_byte == pytest.approx(8.0)         # log2(256) bits for every scored byte
    assert result.bytes == result.tokens


@pytest.mark.parametrize("batch_size", [1, 3])
def test_strided_nll_matches_the_direct_sum_for_a_bigram_model(batch_size):
    torch.manual_seed(0)
    table = torch.randn(V, V)
    ids = torch.randint(0, V, (77,)).tolist()
    nll, tokens, windows = strided_nll(bigram_scorer(table), ids, context_len=20, stride=6, batch_size=batch_size)
    assert tokens == 76 and windows == len(strided_windows(77, 20, 6))
    assert nll == pytest.approx(direct_nll(table, ids), rel=1e-6)


def test_perplexity_counts_bits_per_byte_and_max_tokens():
    torch.manual_seed(1)
    table = torch.randn(V, V)
    text = "naïve café " * 5                                  # multi-byte characters: bytes != characters
    llm = byte_llm(bigram_scorer(table))
    ids = list(text.encode("utf-8"))[:30]
    result = perplexity(llm, text, context_len=12, stride=5, max_tokens=30)
    expected = direct_nll(table, ids)
    assert result.tokens == 29 and result.bytes == 29
    assert result.nll == pytest.approx(expected, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(expected / 29), rel=1e-6)
    assert result.bits_per_byte == pytest.approx(expected / math.log(2) / 29, rel=1e-6)


# -------------------------------------------------------------------------------------- lambada
@pytest.mark.parametrize("text,context,target", [
    ("the cat sat on the mat", "the cat sat on the mat".rsplit(" ", 1)[0], " mat"),
    ('He said, "go home', 'He said, "go', " home"),
    ("a  b", "a ", " b"),                                     # double space: lm-eval splits on each one
    ("one two.", "one", " two."),                            # punctuation stays with the word
])
def test_split_last_word_follows_lambada_openai(text, context, target):
    assert split_last_word(text) == (context, target)
    assert context + target == text


def test_encode_pair_moves_trailing_space_and_splits_the_whole_encoding():
    seen = []

    def encode(s):
        seen.append(s)
        return [ord(c) for c in s]

    ctx, cont = encode_pair(encode, "a ", " b")
    assert seen == ["a  b", "a"]                            # whole text first, then the context alone
    assert ctx == [ord("a")] and cont == [ord(" "), ord(" "), ord("b")]


def test_greedy_match_and_logprob_of_continuations():
    table = torch.full((V, V), -5.0)
    table[torch.arange(V), (torch.arange(V) + 1) % V] = 5.0  # the likely next token is token + 1
    score = bigram_scorer(table)
    logprobs = torch.log_softmax(table, dim=-1)
    pairs = [([1, 2], [3, 4]), ([1, 2], [3, 5]), ([7], [8]), ([9, 10, 11, 12], [13])]
    results = continuation_logprobs(score, pairs, max_len=3, batch_size=2)
    assert [greedy for _, greedy in results] == [True, False, True, True]
    assert results[0][0] == pytest.approx((logprobs[2, 3] + logprobs[3, 4]).item())
    assert results[1][0] == pytest.approx((logprobs[2, 3] + logprobs[3, 5]).item())
    assert results[3][0] == pytest.approx(logprobs[12, 13].item())  # left-truncated to 3 tokens of input


def test_lambada_accuracy_and_perplexity_on_a_known_model():
    table = torch.full((V, V), -5.0)
    table[ord("b"), ord(" ")] = 5.0                          # "b" is followed by a space,
    table[ord(" "), ord("x")] = 5.0                          # and a space by "x"
    llm = byte_llm(bigram_scorer(table))
    result = lambada(llm, ["a b x", "a b y"], batch_size=1)
    logprobs = torch.log_softmax(table, dim=-1)
    assert result.accuracy == 0.5 and result.examples == 2 and result.target_tokens == 4
    expected = (logprobs[ord("b"), ord(" ")] * 2 + logprobs[ord(" "), ord("x")] + logprobs[ord(" "), ord("y")])
    assert result.perplexity == pytest.approx(math.exp(-expected.item() / 2), rel=1e-6)


# ----------------------------------------------------------------------------------- comparison
def test_parse_compare_tells_models_from_schemes(stories):
    variants = parse_compare(f"none,{stories},int4-g64-asym", "base")
    assert variants == [Variant("none", "base", None), Variant(str(stories), str(stories), None),
                        Variant("int4-g64-asym", "base", "int4-g64-asym")]


def test_comparison_table_deltas_against_the_first():
    outcomes = [Outcome(Variant("none", None, None), {"perplexity": 10.0}, {"tokens": 5}),
                Outcome(Variant("other", "p", None), {"perplexity": 12.5}, {"tokens": 5})]
    rows = comparison_rows(outcomes)
    assert rows[0]["delta"] is None and rows[1]["delta"] == pytest.approx(2.5)
    assert rows[1]["delta_rel"] == pytest.approx(0.25)
    table = format_table(outcomes)
    assert "+2.5000 (+25.00%)" in table and "other: tokens 5" in table


def test_cli_compare_writes_one_json(capsys, tmp_path, stories):
    out = tmp_path / "result.json"
    code = main(["eval", "--model", str(stories), "--task", "lambada", "--data", str(EXAMPLE_TASK / "last_word.jsonl"),
                 "--compare", f"none,{stories}", "--output-json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [m["label"] for m in report["models"]] == ["none", str(stories)]
    assert report["models"][0]["scores"] == report["models"][1]["scores"]
    assert report["models"][0]["counts"]["examples"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]   # no temporary file left behind
    assert "accuracy" in capsys.readouterr().out


def test_cli_scores_quantized_weights_with_fp32_activations_by_default(tmp_path, stories):
    """--act-bits 32 is eval's default: a quantized model's scores are those of its dequantized weights;
    --act-bits 16 rounds the activations as `lmforge run` does (the fp32 model is not affected)."""
    data = str(EXAMPLE_TASK / "last_word.jsonl")
    reports = {}
    for bits in (None, "16"):
        out = tmp_path / f"act{bits}.json"
        extra = ["--act-bits", bits] if bits else []
        assert main(["eval", "--model", str(stories), "--task", "lambada", "--data", data,
                     "--compare", "none,int8", "--output-json", str(out), *extra]) == 0
        reports[bits] = json.loads(out.read_text())
    assert reports[None]["settings"]["act_bits"] == 32 and reports["16"]["settings"]["act_bits"] == 16
    fp32, int8 = ({bits: r["models"][i]["scores"]["perplexity"] for bits, r in reports.items()} for i in (0, 1))
    assert fp32[None] == fp32["16"]
    assert int8[None] != int8["16"] and int8[None] == pytest.approx(int8["16"], rel=1e-3)


# -------------------------------------------------------------------------------- lm-eval adapter
@pytest.fixture(scope="module")
def harness():
    pytest.importorskip("lm_eval")
    from lmforge.evaluate import harness
    return harness


@pytest.fixture(scope="module")
def stories_llm(stories):
    from lmforge import LLM
    return LLM(stories)


def test_harness_local_task_matches_the_builtin_lambada(harness, stories_llm, monkeypatch):
    import datasets

    monkeypatch.chdir(ROOT)                                   # the example yaml names its file from here
    scores, counts = harness.run_harness(stories_llm, ["last_word"], include_path=str(EXAMPLE_TASK), batch_size=2)
    assert datasets.config.HF_HUB_OFFLINE                     # conftest's HF_DATASETS_OFFLINE=1 took effect
    builtin = lambada(stories_llm, read_lambada(EXAMPLE_TASK / "last_word.jsonl"))
    assert counts == {"last_word/examples": 5}
    assert scores["last_word/acc"] == pytest.approx(builtin.accuracy)
    assert scores["last_word/perplexity"] == pytest.approx(builtin.perplexity, rel=1e-5)


def window_logprob(llm, inputs: list[int], targets: list[int]) -> float:
    """log p(targets) where the last len(targets) inputs are each followed by a target (one pass)."""
    logits = llm.score(torch.tensor(inputs))[0, len(inputs) - len(targets):]
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(targets)[:, None]).sum().item()


def test_harness_rolling_loglikelihood_uses_disjoint_windows(harness, stories_llm):
    from lm_eval.api.instance import Instance

    text = "Once upon a time, there was a little girl named Lily. She loved to play outside."
    request = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    whole = harness.LmforgeLM(llm=stories_llm)
    ids = whole.tok_encode(text)
    shifted = [whole.prefix_token_id] + ids                   # the prefix token predicts the first token
    assert whole.loglikelihood_rolling(request, disable_tqdm=True) == pytest.approx(
        [window_logprob(stories_llm, shifted[:-1], ids)], rel=1e-5)
    small = harness.LmforgeLM(llm=stories_llm, batch_size=2, max_length=8)
    assert len(ids) > 2 * 8 and len(ids) % 8                  # three windows or more, the last one short
    # each token once; a short last window still gets a full window of context
    expected = sum(window_logprob(stories_llm, shifted[max(0, end - 8):end], ids[k:end])
                   for k, end in ((k, min(k + 8, len(ids))) for k in range(0, len(ids), 8)))
    assert small.loglikelihood_rolling(request, disable_tqdm=True) == pytest.approx([expected], rel=1e-5)


def test_harness_generate_until_matches_llm_generate(harness, stories_llm):
    from lm_eval.api.instance import Instance

    lm = harness.LmforgeLM(llm=stories_llm, batch_size=2)
    prompts = ["Once upon a time", "Tom had a red ball.", "The sun"]
    requests = [Instance("generate_until", {}, (p, {"until": ["."], "max_gen_toks": 12}), i)
                for i, p in enumerate(prompts)]
    outputs = lm.generate_until(requests, disable_tqdm=True)
    assert outputs == [stories_llm.generate(p, max_new_tokens=12, stop=["."])[0] for p in prompts]
    assert all(o and "." not in o for o in outputs)


def test_harness_generation_kwargs(harness):
    gen = harness.generation_config({"until": "\n\n", "max_gen_toks": 5, "do_sample": False, "temperature": 0.7})
    assert (gen.stop, gen.max_new_tokens, gen.temperature) == (("\n\n",), 5, 0.0)
    gen = harness.generation_config({"until": ["Q:", ""], "do_sample": True, "top_p": 0.9, "seed": 3})
    assert (gen.stop, gen.max_new_tokens, gen.temperature, gen.top_p, gen.seed) == (("Q:",), 256, 1.0, 0.9, 3)


def test_harness_quantize_model_arg_loads_a_quantized_model(harness, stories, stories_llm):
    from lm_eval.api.instance import Instance

    from lmforge.quant.linear import QuantLinear, decoder_linears

    quantized = harness.LmforgeLM.create_from_arg_string(f"pretrained={stories},quantize=int8")  # as lm-eval does
    assert all(isinstance(m, QuantLinear) for _, m in decoder_linears(quantized.llm.model))
    request = [Instance("loglikelihood", {}, ("Once upon a time, there was a", " little girl"), 0)]
    [(int8_logprob, _)] = quantized.loglikelihood(request, disable_tqdm=True)
    [(fp32_logprob, _)] = harness.LmforgeLM(llm=stories_llm).loglikelihood(request, disable_tqdm=True)
    assert int8_logprob == pytest.approx(fp32_logprob, rel=0.05) and int8_logprob != fp32_logprob


def test_cli_compare_precisions(capsys, stories):
    code = main(["eval", "--model", str(stories), "--task", "perplexity", "--data",
                 str(EXAMPLE_TASK / "last_word.jsonl"), "--context-len", "32", "--stride", "16", "--compare", "none,int8"])
    out = capsys.readouterr().out
    assert code == 0
    [none_ppl, int8_ppl] = [float(line.split()[2]) for line in out.splitlines() if " perplexity " in line]
    assert int8_ppl == pytest.approx(none_ppl, rel=0.05) and int8_ppl != none_ppl  # close, but really quantized


# ------------------------------------------------------------------------------------ bad input
def run_cli(capsys, *argv):
    code = main(["eval", *argv])
    return code, capsys.readouterr().err.strip()


def assert_one_line_error(code, err, *needles):
    assert code == 2 and "Traceback" not in err
    assert err.startswith("lmforge: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("task", ["perplexity", "lambada"])
def test_missing_data_file(capsys, tmp_path, task):
    assert_one_line_error(*run_cli(capsys, "--task", task, "--data", str(tmp_path / "nope")), "no such data file")


@pytest.mark.parametrize("task", ["perplexity", "lambada"])
def test_empty_data_file(capsys, tmp_path, task):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert_one_line_error(*run_cli(capsys, "--task", task, "--data", str(empty)), "is empty")


def test_stride_larger_than_context(capsys, tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("some text")
    assert_one_line_error(*run_cli(capsys, "--task", "perplexity", "--data", str(data), "--context-len", "8",
                                   "--stride", "9"), "--stride", "--context-len")


def test_context_longer_than_the_model(capsys, tmp_path, stories):
    data = tmp_path / "t.txt"
    data.write_text("some text")
    assert_one_line_error(*run_cli(capsys, "--model", str(stories), "--task", "perplexity", "--data", str(data),
                                   "--context-len", "4096"), "context window (512)")


def test_bad_lambada_line(capsys, tmp_path):
    data = tmp_path / "l.jsonl"
    data.write_text('{"text": "a b"}\n{"txt": "c d"}\n')
    assert_one_line_error(*run_cli(capsys, "--task", "lambada", "--data", str(data)), "l.jsonl:2", '"text"')


def test_compare_word_that_is_no_model_nor_scheme(capsys):
    assert_one_line_error(*run_cli(capsys, "--task", "lambada", "--data", str(EXAMPLE_TASK / "last_word.jsonl"),
                                   "--compare", "none,int9"), "'int9' is neither a model", "int8")


def test_flag_of_another_task(capsys, tmp_path):
    assert_one_line_error(*run_cli(capsys, "--task", "lambada", "--data", "x", "--stride", "4"),
                          "--stride does not apply to --task lambada")


def test_output_folder_missing(capsys, tmp_path):
    assert_one_line_error(*run_cli(capsys, "--task", "lambada", "--data", "x",
                                   "--output-json", str(tmp_path / "no" / "r.json")), "does not exist")
