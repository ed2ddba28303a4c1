"""Parity with transformers for every family: the definition of correct.

For each tiny random model (tests/family_configs): fp32 logits of a prefill plus 8 cached decode steps
within 1e-4 of transformers (op by op, and through the native decode step where the family fits it,
given its input or making it from token ids); 32 greedy tokens identical to transformers' generate; a batch of three
prompts of different lengths (left padding) identical to each prompt run alone."""
import pytest
import torch

from family_configs import all_cases
from lmforge import LLM
from lmforge.generation.engine import Prompts, static_decode_step
from lmforge.generation.sampling import GenerationConfig

CASES = all_cases()
ATOL = 1e-4


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = CASES[request.param]().eval()
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, LLM(str(path)), request.param


def prompt_ids(n, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def cached_decode_error(hf, llm, plan=None, tokens=False, static=False):
    """Max |logit difference| from transformers over a 12-token prefill and 8 cached decode steps (with
    `tokens`, through plan.step_tokens: the step's input made in the plan; with `static`, through
    static_decode_step, the step --compile compiles, run eagerly here, over a reused cache of 256 slots
    whose later slots hold stale values)."""
    vocab = llm.config.vocab_size
    ids = prompt_ids(12, vocab, 1)
    steps = prompt_ids(8, vocab, 2)
    full = torch.tensor([ids + steps])
    with torch.no_grad():
        ref = hf(full).logits.float()                           # [1, 20, V]
    eng = llm.engine
    cache = eng.new_cache(1, len(ids) + len(steps))
    if static:
        cache = eng.static_cache(1, len(ids) + len(steps))
        for buffer in cache.buffers():
            buffer.normal_()  # what an earlier generation may have left
    batch, key_valid, pos_table = eng.prefill_batch(Prompts.pad([ids], 0, "cpu"), cache.max_len)
    ours = [eng.forward(torch.tensor([ids]), batch, cache, last_only=False)[0]]
    for i, t in enumerate(steps):
        if static:
            with torch.inference_mode():
                ours.append(static_decode_step(llm.model, cache, torch.tensor([t]), torch.tensor(len(ids) + i),
                                               key_valid, pos_table, llm.config.sliding_window or 0))
            continue
        if tokens:
            window = llm.config.sliding_window or 0
            ours.append(plan.step_tokens(torch.tensor([t]), pos_table, cache.k, cache.v, len(ids) + i, key_valid,
                                         window, None))
            continue
        ours.append(eng.forward(torch.tensor([[t]]), eng.decode_batch(len(ids) + i, key_valid, pos_table),
                                cache, last_only=True, plan=plan)[0])
    return (torch.cat(ours) - ref[0]).abs().max().item(), full, ref


def test_logits_prefill_and_cached_decode(pair):
    hf, llm, name = pair
    err, full, ref = cached_decode_error(hf, llm)
    assert err <= ATOL, f"{name}: max abs logit difference {err:.2e}"
    # full-sequence scoring path too
    err_score = (llm.score(full) - ref).abs().max().item()
    assert err_score <= ATOL, f"{name}: score() differs by {err_score:.2e}"


def test_static_decode_step_logits(pair):
    """The fixed-shape decode step that --compile compiles (CUDA graphs on CUDA), here uncompiled."""
    hf, llm, name = pair
    err, _, _ = cached_decode_error(hf, llm, static=True)
    assert err <= ATOL, f"{name}: max abs logit difference {err:.2e} with the static decode step"


def test_native_decode_step_logits(pair):
    """The decode steps through the native plan (models/native_step.py), for the families it fits."""
    hf, llm, name = pair
    plan = llm.engine.native_plan()
    if plan is None:
        pytest.skip(f"{name} runs op by op: {llm.engine.native_plan_reason}")
    err, _, _ = cached_decode_error(hf, llm, plan)
    assert err <= ATOL, f"{name}: max abs logit difference {err:.2e} with the native step"
    assert plan.takes_tokens(), f"{name}: the plan does not make its input from token ids"
    err, _, _ = cached_decode_error(hf, llm, plan, tokens=True)
    assert err <= ATOL, f"{name}: max abs logit difference {err:.2e} with the native step from token ids"


def test_greedy_tokens_match_transformers(pair):
    hf, llm, name = pair
    ids = prompt_ids(7, llm.config.vocab_size, 3)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=32, min_new_tokens=32)[0, len(ids):].tolist()
    ours = llm.generate_ids([ids], GenerationConfig(max_new_tokens=32, ignore_eos=True))[0]
    assert ours == ref


def test_left_padded_batch_equals_single(pair):
    hf, llm, name = pair
    prompts = [prompt_ids(n, llm.config.vocab_size, 10 + n) for n in (5, 9, 13)]
    gen = GenerationConfig(max_new_tokens=16, ignore_eos=True)
    batched = llm.generate_ids(prompts, gen)
    single = [llm.generate_ids([p], gen)[0] for p in prompts]
    assert batched == single
