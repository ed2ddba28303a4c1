"""Speculative decoding: greedy output identical to the target's own, the rejection rule's output
distribution equal to the target's (a chi-square test over seeded runs), n-gram lookup, and errors."""
import math

import pytest
import torch
import transformers as T

from family_configs import all_cases
from lmforge import LLM
from lmforge.errors import LmforgeError
from lmforge.generation.sampling import GenerationConfig
from lmforge.generation.speculative import NgramDrafter, Speculator, block_early_eos, lookup

CASES = all_cases()
FAMILIES = ["mistral", "gpt2", "bloom"]  # rope + GQA + sliding window, learned positions, ALiBi


def saved(model, path) -> LLM:
    model.save_pretrained(path)
    return LLM(str(path))


@pytest.fixture(scope="module", params=[c for c in FAMILIES if c in CASES])
def pair(request, tmp_path_factory):
    """(target, draft): two random models of one family and vocabulary (different weights)."""
    torch.manual_seed(0)
    target = saved(CASES[request.param](), tmp_path_factory.mktemp("target"))
    torch.manual_seed(1)
    draft = saved(CASES[request.param](), tmp_path_factory.mktemp("draft"))
    return target, draft


def repetitive_prompt(vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(5)
    motif = torch.randint(3, vocab, (5,), generator=g).tolist()
    return motif * 3 + motif[:2]


@pytest.mark.parametrize("which", ["other", "self", "ngram"])
def test_greedy_equals_target_greedy(pair, which):
    target, draft = pair
    prompt = repetitive_prompt(target.config.vocab_size)
    gen = GenerationConfig(max_new_tokens=20, ignore_eos=True)
    plain = target.generate_ids([prompt], gen)[0]
    spec = target.speculator({"other": draft, "self": target, "ngram": "ngram"}[which], 3)
    assert target.generate_ids([prompt], gen, speculator=spec)[0] == plain
    stats = spec.stats
    assert stats.generated == 20 and stats.steps == 20 - stats.accepted
    if which == "self":  # the target drafting for itself: every draft is kept
        assert stats.acceptance_rate == 1.0 and stats.tokens_per_step == pytest.approx(20 / 5)


def test_self_int4_draft_keeps_greedy_output(tmp_path):
    torch.manual_seed(0)
    target = saved(CASES["llama"](), tmp_path)
    prompt = repetitive_prompt(target.config.vocab_size)
    gen = GenerationConfig(max_new_tokens=16, ignore_eos=True)
    spec = target.speculator("self-int4", 4)
    assert target.generate_ids([prompt], gen, speculator=spec)[0] == target.generate_ids([prompt], gen)[0]
    assert spec.stats.accepted > 0


def test_greedy_stops_at_eos_and_respects_min_new_tokens(pair):
    target, _ = pair
    prompt = repetitive_prompt(target.config.vocab_size)
    free = target.generate_ids([prompt], GenerationConfig(max_new_tokens=12, ignore_eos=True))[0]
    eos = free[4]
    for min_new in (0, 8):
        gen = GenerationConfig(max_new_tokens=12, min_new_tokens=min_new, eos_token_ids=(eos,))
        plain = target.generate_ids([prompt], gen)[0]
        spec = target.speculator(target, 4)
        assert target.generate_ids([prompt], gen, speculator=spec)[0] == plain
        assert eos not in plain[:-1] and eos not in plain[:min_new]
        assert (min_new == 0) <= (len(plain) <= 5)


# ------------------------------------------------------------------------------- distribution

def tiny_llama(path, seed: int, vocab: int) -> LLM:
    """A 1-layer model over a tiny vocabulary with peaked, seed-dependent next-token distributions."""
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, max_position_embeddings=32, initializer_range=0.3)
    return saved(T.LlamaForCausalLM(cfg).eval(), path)


def joint_two_tokens(llm: LLM, prompt: list[int], temperature: float) -> torch.Tensor:
    """Exact probabilities [V, V] of the next two tokens under temperature sampling."""
    V = llm.config.vocab_size
    first = (llm.score(torch.tensor([prompt]))[0, -1] / temperature).softmax(-1)        # [V]
    follow = torch.tensor([prompt + [t] for t in range(V)])
    second = (llm.score(follow)[:, -1] / temperature).softmax(-1)                     # [V, V]
    return first[:, None] * second


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Upper 0.1% point of chi-square with df degrees of freedom (Wilson-Hilferty)."""
    a = 2 / (9 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def test_sampling_keeps_the_target_distribution(tmp_path):
    V, runs, temperature = 4, 500, 0.9
    target = tiny_llama(tmp_path / "t", 0, V)
    draft = tiny_llama(tmp_path / "d", 1, V)
    prompt = [1, 3, 2]
    p = joint_two_tokens(target, prompt, temperature).flatten()     # [V * V]
    q = joint_two_tokens(draft, prompt, temperature).flatten()
    spec = target.speculator(draft, 2)
    counts = torch.zeros(V * V)
    for seed in range(runs):  # fixed seeds: deterministic, cannot flake
        gen = GenerationConfig(max_new_tokens=2, temperature=temperature, seed=seed, ignore_eos=True)
        a, b = target.generate_ids([prompt], gen, speculator=spec)[0]
        counts[a * V + b] += 1
    expected = runs * p

    def chi2(observed):
        return float(((observed - expected) ** 2 / expected).sum())

    critical = chi2_critical(V * V - 1)
    assert 0.2 < spec.stats.acceptance_rate < 0.9  # both the keep and the resample paths are exercised
    assert chi2(runs * q) > 5 * critical  # the test would catch output drawn from the draft
    assert chi2(counts) < critical


def test_point_mass_draft_keeps_the_target_distribution():
    """The n-gram drafter's q is a point mass: accept with p(d), else resample from p without d."""
    from lmforge.generation.speculative import accept_sampled
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    n = 4000
    for _ in range(n):
        kept, token = accept_sampled([1], None, p, g)
        counts[1 if kept else token] += 1
    assert float((counts / n - p[0]).abs().max()) < 0.03


# ----------------------------------------------------------------------------------- pieces

def test_ngram_lookup_latest_longest_match():
    seq = [1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3]
    assert lookup(seq, 2, 3, 1) == [7, 8]          # latest "2 3" followed by 7 8
    assert lookup([4, 5, 6], 3, 3, 1) == []         # no earlier occurrence
    assert lookup(seq, 0, 3, 1) == []
    assert lookup([1, 2, 1, 2], 5, 3, 1) == [1, 2]  # the continuation may reach the end


def test_block_early_eos():
    logits = block_early_eos(torch.zeros(3, 4), produced=5, min_new=7, eos=torch.tensor([2]))
    assert logits[:, 2].tolist() == [float("-inf"), float("-inf"), 0.0]


def test_errors(pair, tmp_path):
    target, _ = pair
    spec = target.speculator("ngram", 2)
    with pytest.raises(LmforgeError, match="one prompt at a time"):
        list(spec.generate([[3, 4], [5, 6]], GenerationConfig(max_new_tokens=2)))
    with pytest.raises(LmforgeError, match="not beam search"):
        list(spec.generate([[3, 4]], GenerationConfig(max_new_tokens=2, num_beams=2)))
    with pytest.raises(LmforgeError, match="at least 1"):
        Speculator(target.engine, NgramDrafter(), 0)
    other = tiny_llama(tmp_path / "small", 0, 7)
    with pytest.raises(LmforgeError, match="vocabulary of 7 tokens"):
        target.speculator(other)


# ------------------------------------------------------------------------------ stories260K

def test_stories_ngram_and_cli_summary(stories, capsys):
    from lmforge.cli import main
    llm = LLM(str(stories))
    text = "Lily and Ben went to the park. Lily and Ben played on the swings. Lily and Ben"
    gen = GenerationConfig(max_new_tokens=24)
    ids = llm.tokenizer.encode(text)
    spec = llm.speculator("ngram", 4)
    assert llm.generate_ids([ids], gen, speculator=spec)[0] == llm.generate_ids([ids], gen)[0]
    assert spec.stats.drafted > 0
    assert main(["generate", "--model", str(stories), text, "--max-new-tokens", "16", "--draft", "ngram",
                 "--speculate-k", "3"]) == 0
    err = capsys.readouterr().err
    assert "acceptance" in err and "tokens/step" in err and "speedup" in err


def test_cli_draft_with_another_vocabulary_is_one_line(stories, tmp_path, capsys):
    from lmforge.cli import main
    tiny_llama(tmp_path / "small", 0, 7)
    capsys.readouterr()  # drop what transformers printed while saving
    assert main(["generate", "--model", str(stories), "Once", "--max-new-tokens", "2",
                 "--draft-model", str(tmp_path / "small")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vocabulary of 7 tokens" in err[0]
