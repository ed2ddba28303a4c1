"""Beam search: the same tokens as transformers' generate(num_beams=...) for every family, with EOS
reachable so that finished hypotheses, length normalisation and every early_stopping mode count."""
import pytest
import torch
import transformers as T

from family_configs import all_cases
from lmforge import LLM
from lmforge.cache import StaticKVCache
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.generation.sampling import GenerationConfig

CASES = all_cases()
MAX_NEW = 12

# (num_beams, length_penalty, early_stopping, extra settings); "eos" picks a token the model emits
SETTINGS = [
    (2, 1.0, False, {}),
    (4, 0.5, True, {}),
    (4, 2.0, "never", {}),
    (3, 1.0, "never", {"eos": False, "repetition_penalty": 1.3}),
    (2, -1.0, False, {"min_new_tokens": 5, "repetition_penalty": 1.2}),
]


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = CASES[request.param]().eval()
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    hf.generation_config.eos_token_id = None
    return hf, LLM(str(path))


def hf_beam(hf, ids, gen: GenerationConfig, eos: int | None) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          do_sample=False, num_beams=gen.num_beams, length_penalty=gen.length_penalty,
                          early_stopping=gen.early_stopping, max_new_tokens=gen.max_new_tokens,
                          min_new_tokens=gen.min_new_tokens, repetition_penalty=gen.repetition_penalty,
                          eos_token_id=eos, pad_token_id=0)
    return out[0, len(ids):].tolist()


def gen_config(num_beams, length_penalty, early_stopping, extra, eos):
    settings = {k: v for k, v in extra.items() if k != "eos"}
    return GenerationConfig(max_new_tokens=MAX_NEW, num_beams=num_beams, length_penalty=length_penalty,
                            early_stopping=early_stopping, **settings,
                            **({"eos_token_ids": (eos,)} if eos is not None else {"ignore_eos": True}))


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping,extra", SETTINGS)
def test_beam_search_matches_transformers(pair, num_beams, length_penalty, early_stopping, extra):
    hf, llm = pair
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, llm.config.vocab_size, (6,), generator=g).tolist()
    greedy = llm.generate_ids([ids], GenerationConfig(max_new_tokens=4, ignore_eos=True))[0]
    eos = greedy[2] if extra.get("eos", True) else None
    gen = gen_config(num_beams, length_penalty, early_stopping, extra, eos)
    assert llm.generate_ids([ids], gen)[0] == hf_beam(hf, ids, gen, eos)


# ------------------------------------------------------------------------------ the real model
@pytest.fixture(scope="module")
def stories_pair(stories):
    return T.LlamaForCausalLM.from_pretrained(stories).eval(), LLM(str(stories))


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_stories_beams_end_on_eos_like_transformers(stories_pair, early_stopping):
    hf, llm = stories_pair
    ids = llm.tokenizer.encode("Once upon a time")
    dot = llm.tokenizer.encode(".", add_special_tokens=False)[-1]
    gen = GenerationConfig(max_new_tokens=30, num_beams=4, early_stopping=early_stopping, eos_token_ids=(dot,))
    ours = llm.generate_ids([ids], gen)[0]
    assert ours == hf_beam(hf, ids, gen, dot)
    assert ours[-1] == dot and len(ours) < 30  # the best hypothesis is a finished one


def test_cli_beam_search(capsys, stories):
    assert main(["generate", "--model", str(stories), "Once upon a time", "--num-beams", "4",
                 "--max-new-tokens", "20"]) == 0
    out = capsys.readouterr().out
    llm = LLM(str(stories))
    assert out == "Once upon a time" + llm.generate("Once upon a time", max_new_tokens=20, num_beams=4)[0] + "\n"


# ------------------------------------------------------------------------------------ the cache
def test_cache_reorder_gathers_rows_within_length():
    cfg = type("Cfg", (), dict(n_layers=2, n_kv_heads=1, head_dim=3))()  # only the shape fields
    cache = StaticKVCache(cfg, 3, 5, torch.float32, "cpu")
    cache.k.copy_(torch.arange(cache.k.numel(), dtype=torch.float32).view_as(cache.k))
    cache.v.copy_(-cache.k)
    before_k = cache.k.clone()
    first = cache.first_rows(1)
    assert first.k.data_ptr() == cache.k.data_ptr() and first.k.shape[1] == 1
    for index in ([2, 0, 0], [1, 2, 0]):
        index = torch.tensor(index)
        expected = before_k[:, index, :, :4]
        cache.reorder(index, 4)
        assert torch.equal(cache.k[:, :, :, :4], expected)
        assert torch.equal(cache.v[:, :, :, :4], -expected)
        before_k = cache.k.clone()


def test_unknown_early_stopping_is_an_error():
    with pytest.raises(LmforgeError, match="early_stopping"):
        GenerationConfig(num_beams=2, early_stopping="sometimes")
