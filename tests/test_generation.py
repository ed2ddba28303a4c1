"""Generation on the real stories260K model: greedy text, sampling, streaming, stop strings."""
import pytest
import torch

from lmforge import LLM
from lmforge.cli import main
from lmforge.generation.sampling import GenerationConfig, apply_repetition_penalty, warp


@pytest.fixture(scope="module")
def llm(stories):
    return LLM(str(stories))


def test_stories_greedy_continuation(llm):
    out = llm.generate(["Once upon a time"], max_new_tokens=24)[0]
    assert out.startswith(", there was a little girl named Lily"), out


def test_stream_pieces_join_to_generate(llm):
    pieces = list(llm.stream("Once upon a time", max_new_tokens=30))
    assert len(pieces) > 5
    assert "".join(pieces) == llm.generate("Once upon a time", max_new_tokens=30)[0]


def test_stop_string_cuts_and_ends_early(llm):
    full = llm.generate("Once upon a time", max_new_tokens=40)[0]
    assert "Lily" in full
    cut = llm.generate("Once upon a time", max_new_tokens=40, stop=["Lily"])[0]
    assert cut == full[: full.index("Lily")]
    assert "".join(llm.stream("Once upon a time", max_new_tokens=40, stop="Lily")) == cut
    ids = llm.generate_ids([llm.tokenizer.encode("Once upon a time")], GenerationConfig(max_new_tokens=40, stop=("Lily",)))
    assert len(ids[0]) < 40  # generation stopped at the stop string, not at max_new_tokens


def test_seeded_sampling_is_reproducible(llm):
    a = llm.generate(["Once upon a time"] * 2, max_new_tokens=20, temperature=1.0, seed=7)
    b = llm.generate(["Once upon a time"] * 2, max_new_tokens=20, temperature=1.0, seed=7)
    c = llm.generate(["Once upon a time"] * 2, max_new_tokens=20, temperature=1.0, seed=8)
    assert a == b
    assert a != c
    assert a[0] != a[1]  # rows of a batch draw different samples


def test_batch_of_texts_equals_singles(llm):
    prompts = ["Once upon a time", "The cat", "Tom and his mom went to the park to play"]
    batched = llm.generate(prompts, max_new_tokens=20)
    assert batched == [llm.generate(p, max_new_tokens=20)[0] for p in prompts]


def test_max_new_tokens_and_eos(llm):
    ids = llm.generate_ids([llm.tokenizer.encode("Once upon a time")], GenerationConfig(max_new_tokens=7))[0]
    assert len(ids) == 7
    # with "." as the EOS token, generation ends right after the first sentence, EOS included
    dot = llm.tokenizer.encode(".", add_special_tokens=False)[-1]
    gen = GenerationConfig(max_new_tokens=100, eos_token_ids=(dot,))
    ids = llm.generate_ids([llm.tokenizer.encode("Once upon a time")], gen)[0]
    assert ids[-1] == dot and dot not in ids[:-1] and len(ids) < 100
    assert llm.generate("Once upon a time", max_new_tokens=100, eos_token_ids=(dot,))[0] == \
        ", there was a little girl named Lily."


def test_bf16_runs_and_mostly_agrees(llm, stories):
    bf = LLM(str(stories), dtype="bfloat16")
    out = bf.generate("Once upon a time", max_new_tokens=12)[0]
    assert out.startswith(", there was a little girl")


def test_warpers_match_transformers():
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    gen = GenerationConfig(temperature=0.7, top_k=10, top_p=0.8)
    ref = logits.clone()
    for w in (tr.TemperatureLogitsWarper(0.7), tr.TopKLogitsWarper(10), tr.TopPLogitsWarper(0.8)):
        ref = w(None, ref)
    assert torch.equal(warp(logits, gen).isinf(), ref.isinf())
    assert torch.allclose(warp(logits, gen).nan_to_num(neginf=0), ref.nan_to_num(neginf=0))
    ids = torch.tensor([[1, 2, 2, 7], [0, 0, 0, 0], [5, 9, 11, 49]])
    seen = torch.zeros(3, 50, dtype=torch.bool)
    seen.scatter_(1, ids, True)
    ref = tr.RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    assert torch.allclose(apply_repetition_penalty(logits, seen, 1.3), ref)


def test_cli_generate_streams(capsys, stories):
    assert main(["generate", "--model", str(stories), "Once upon a time", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.startswith("Once upon a time, there was a little girl")


def test_cli_info(capsys, stories):
    assert main(["info", str(stories)]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out and "260,032" in out and "512" in out


def test_rows_finish_independently_in_a_batch(llm):
    """A row that reaches EOS yields -1 from then on while the others go on, and every row's tokens are
    those it generates alone."""
    dot = llm.tokenizer.encode(".", add_special_tokens=False)[-1]
    gen = GenerationConfig(max_new_tokens=60, eos_token_ids=(dot,))
    prompts = [llm.tokenizer.encode(p) for p in ("Once upon a time", "Tom and his mom went to the park to play")]
    batched = llm.generate_ids(prompts, gen)
    assert batched == [llm.generate_ids([p], gen)[0] for p in prompts]
    assert len(batched[0]) != len(batched[1]) and all(ids[-1] == dot for ids in batched)
    steps = torch.stack(list(llm.engine.generate(prompts, gen, frozenset({dot}))))  # [steps, 2]
    for row, ids in enumerate(batched):
        assert steps[:len(ids), row].tolist() == ids
        assert (steps[len(ids):, row] == -1).all()
