"""The native decode step (models/native_step.py, kernels/csrc/decode_step.cpp): a one-token step of
the whole model in one call must give the logits and the cache of the op-by-op path, for every kind of
Linear it takes, every batch size, with and without rope biases and GQA; models it does not fit must
fall back with a reason."""
import os

import pytest
import torch
import transformers as T

from family_configs import perturbed
from lmforge import LLM, kernels
from lmforge.generation.engine import Prompts
from lmforge.generation.sampling import GenerationConfig
from lmforge.models import native_step
from lmforge.quant.linear import set_activation_bits

pytestmark = pytest.mark.skipif(kernels.backend() != "native", reason="the native kernels are not available")

DIMS = dict(vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=256)  # widths multiples of 32: every quantized format fits


def save(tmp_path_factory, name, model):
    torch.manual_seed(0)
    model = perturbed(model.eval())
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
    torch.manual_seed(0)
    return save(tmp_path_factory, "llama", T.LlamaForCausalLM(T.LlamaConfig(**DIMS, num_key_value_heads=2)))


@pytest.fixture(scope="module")
def qwen2_path(tmp_path_factory):  # q/k/v biases, tied head
    torch.manual_seed(0)
    return save(tmp_path_factory, "qwen2", T.Qwen2ForCausalLM(T.Qwen2Config(**DIMS, num_key_value_heads=1,
                                                                            tie_word_embeddings=True)))


def decode_both(llm, prompts, steps=6, seed=0):
    """Logits of `steps` teacher-forced decode steps for a left-padded batch, op by op, through the
    native plan's step (input made op by op) and, where the plan takes token ids, its step_tokens
    (each on its own cache); also the caches at the end. step_tokens' greedy tokens must be numpy's
    argmax of its logits."""
    eng = llm.engine
    plan = eng.native_plan()
    assert plan is not None, eng.native_plan_reason
    batch_in = Prompts.pad(prompts, 0, eng.device)
    B, P = batch_in.tokens.shape
    total = P + steps
    feeds = torch.randint(3, llm.config.vocab_size, (steps, B, 1), generator=torch.Generator().manual_seed(seed))
    out = {}
    for name, p in (("ops", None), ("native", plan)):
        cache = eng.new_cache(B, total)
        batch, key_valid, pos = eng.prefill_batch(batch_in, total)
        eng.forward(batch_in.tokens, batch, cache, True)
        logits = [eng.forward(feeds[i], eng.decode_batch(P + i, key_valid, pos), cache, True, plan=p)[:, -1]
                  for i in range(steps)]
        out[name] = (torch.stack(logits), cache)
    if plan.takes_tokens():  # the input made in the plan: the same numbers to the bit
        cache = eng.new_cache(B, total)
        batch, key_valid, pos = eng.prefill_batch(batch_in, total)
        eng.forward(batch_in.tokens, batch, cache, True)
        logits = []
        for i in range(steps):
            greedy = torch.empty(B, dtype=torch.long)
            logits.append(plan.step_tokens(feeds[i][:, 0], pos, cache.k, cache.v, P + i, key_valid,
                                           llm.config.sliding_window or 0, greedy))
            assert greedy.tolist() == logits[-1].numpy().argmax(-1).tolist()
        assert torch.equal(torch.stack(logits), out["native"][0])
        assert torch.equal(cache.k, out["native"][1].k) and torch.equal(cache.v, out["native"][1].v)
        out["tokens"] = (torch.stack(logits), cache)
    return out


def assert_same_cache(a, b, atol=1e-4):
    """Within atol, plus one unit in the last place of a cache narrower than fp32: the two paths'
    keys and values differ by ~1e-6 before they are stored and may round to neighbouring fp16 values."""
    assert a.k.dtype == b.k.dtype
    ulp = torch.finfo(a.k.dtype).eps if a.k.dtype != torch.float32 else 0.0
    for x, y in ((a.k, b.k), (a.v, b.v)):
        x, y = x.float(), y.float()
        excess = ((x - y).abs() - (atol + ulp * torch.maximum(x.abs(), y.abs()))).max().item()
        assert excess <= 0, f"the caches differ by {excess:.2e} past the tolerance"


def assert_same_step(out, atol=1e-4, tokens=True):
    """The native paths give the op-by-op path's logits and cache; `tokens`: step_tokens is among them."""
    assert ("tokens" in out) == tokens
    (ops, c_ops) = out["ops"]
    nat, c_nat = out["native"]
    err = (ops - nat).abs().max().item()
    assert err <= atol, f"native step logits differ from the op-by-op path by {err:.2e}"
    assert torch.equal(ops.argmax(-1), nat.argmax(-1))
    assert_same_cache(c_ops, c_nat, atol)



@pytest.mark.parametrize("quantize", [None, "int8", "int4", "int4-g64-asym"])
@pytest.mark.parametrize("batch", [1, 3, 6])
def test_matches_the_op_by_op_path(llama_path, quantize, batch):
    llm = LLM(llama_path, quantize=quantize)
    prompts = [list(range(5 + 3 * i, 12 + 5 * i)) for i in range(batch)]  # different lengths: left padding
    assert_same_step(decode_both(llm, prompts))


@pytest.mark.parametrize("quantize", [None, "int4"])
def test_long_context_split_attention(llama_path, quantize):
    """Past 32 slots the step splits each head's attention into parts spread over the threads; with left
    padding whole parts of the shorter row are masked."""
    llm = LLM(llama_path, quantize=quantize)
    prompts = [list(range(3, 103)), list(range(5, 40))]  # 100 and 35 tokens: 65 slots of padding
    assert_same_step(decode_both(llm, prompts, steps=3))


@pytest.mark.parametrize("hidden,heads,kv", [
    (800, 10, 2),  # head size 80 (64 + 16 channels), 5 query heads per key/value head (3 + 2)
    (640, 5, 1),   # head size 128 (two passes of 64 channels), 5 heads per group
    (448, 7, 1),   # head size 64, 7 heads per group (4 + 3)
    (512, 8, 1),   # head size 64, 8 heads per group (4 + 4)
])
@pytest.mark.parametrize("quantize", [None, "int4-g32"])  # fp32 and fp16 caches
def test_head_sizes_and_groups(tmp_path_factory, hidden, heads, kv, quantize):
    """The attention's vector paths split head sizes into 64-channel passes and a group's query heads
    into runs of up to 4; long, left-padded contexts take the split parts and the masked ones."""
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=320, hidden_size=hidden, intermediate_size=256, num_hidden_layers=1,
                        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=256)
    llm = LLM(save(tmp_path_factory, f"llama_h{hidden}_{heads}_{kv}", T.LlamaForCausalLM(cfg)), quantize=quantize)
    assert_same_step(decode_both(llm, [list(range(3, 83)), list(range(5, 30))], steps=2))


def test_fp16_kv_cache(llama_path):
    """An fp16 KV cache (kv_cache_dtype): the native step and the op-by-op path read and write it alike,
    and the logits stay close to those with the fp32 cache."""
    prompts = [list(range(3, 103)), list(range(5, 40))]  # split attention, masked parts
    half = decode_both(LLM(llama_path, quantize="int4", kv_cache_dtype="float16"), prompts, steps=3)
    assert half["native"][1].k.dtype == half["ops"][1].v.dtype == torch.float16
    assert_same_step(half)
    full = decode_both(LLM(llama_path, quantize="int4", kv_cache_dtype="float32"), prompts, steps=3)["native"][0]
    assert (half["native"][0] - full).abs().max() <= 1e-2 * full.abs().max()


@pytest.mark.parametrize("act_bits", [16, 8])
def test_biases_gqa_and_a_tied_head(qwen2_path, act_bits):
    llm = LLM(qwen2_path, quantize="int8", act_bits=act_bits)
    assert_same_step(decode_both(llm, [[4, 5, 6, 7], [9, 10]]))
    dense = LLM(qwen2_path)
    assert_same_step(decode_both(dense, [[4, 5, 6, 7, 8, 9, 10]]))


def test_generation_is_unchanged(llama_path):
    llm = LLM(llama_path, quantize="int4")
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
    gen = GenerationConfig(max_new_tokens=20, ignore_eos=True)
    fused = llm.generate_ids(prompts, gen)
    os.environ[native_step.DISABLE_ENV] = "0"
    try:
        assert llm.engine.native_plan() is None and "LMFORGE_DECODE_STEP=0" in llm.engine.native_plan_reason
        ops = llm.generate_ids(prompts, gen)
    finally:
        del os.environ[native_step.DISABLE_ENV]
    assert fused == ops
    assert llm.engine.native_plan() is not None


def test_default_model(smollm2_path):
    """The default GGUF (Q4_1 layers, Q8_0 tied head) in both rounded-activation modes, batch 1 and 5."""
    llm = LLM()
    try:
        for bits in (16, 8):
            set_activation_bits(llm.model, bits)
            assert_same_step(decode_both(llm, [list(range(100, 120))], steps=4))
        assert_same_step(decode_both(llm, [list(range(100, 100 + 3 * i + 2)) for i in range(5)], steps=3))
    finally:
        set_activation_bits(llm.model, 16)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_gguf_k_quant_blocks(tmp_path, kind):
    """GGUF K-quants as the plan takes them: Q6_K as plain int8 with K-quant scales per 16 columns (all of
    a file's Linears, embedding and head), and Q4_K_M- and Q5_K_M-style mixes (Q4_K int4, or Q5_K plain
    int8 with K-quant mins; Q6_K ffn_down and head; q/k/v a PartsLinear of q and k in the base type and a
    Q6_K v; qwen2's with biases) in both rounded-activation modes, batch 1 and 3."""
    from lmforge.quant.linear import PartsLinear
    from gguf import GGMLQuantizationType as Q
    from test_gguf import arch_of, tiny, write_gguf

    q6 = LLM(str(write_gguf(tiny(kind), tmp_path / "q6_k.gguf", arch=arch_of(kind), qtype=Q.Q6_K)))
    # random K-quant blocks give logits of ~17: the tolerance scales with them (as in test_gguf)
    assert_same_step(decode_both(q6, [list(range(10, 30)), list(range(40, 47))], steps=4), atol=1e-3)
    types = {r"attn_v\.": Q.Q6_K, r"blk\.1\.ffn_down\.": Q.Q6_K, r"^output\.": Q.Q6_K}
    for base in (Q.Q4_K, Q.Q5_K):
        mix = LLM(str(write_gguf(tiny(kind), tmp_path / f"{base.name}_m.gguf", arch=arch_of(kind), qtype=base,
                                 types=types)))
        assert isinstance(mix.model.layers[0].attn.wqkv, PartsLinear)
        assert (mix.model.layers[0].attn.wqkv.bias is not None) == (kind == "qwen2")
        try:
            for bits in (16, 8):
                set_activation_bits(mix.model, bits)
                assert_same_step(decode_both(mix, [list(range(10, 30)), list(range(40, 47)), [5]], steps=3),
                                 atol=1e-3)
        finally:
            set_activation_bits(mix.model, 16)


def test_plan_follows_the_model(llama_path):
    """A changed act_bits or a replaced module makes a new plan; exact activations run op by op."""
    llm = LLM(llama_path, quantize="int8")
    eng = llm.engine
    first = eng.native_plan()
    assert first is not None and eng.native_plan() is first
    set_activation_bits(llm.model, 8)
    assert eng.native_plan() is not first
    set_activation_bits(llm.model, 32)
    assert eng.native_plan() is None and "act_bits 32" in eng.native_plan_reason


def test_models_it_does_not_fit_fall_back_with_a_reason(tmp_path_factory):
    bloom = save(tmp_path_factory, "bloom", T.BloomForCausalLM(T.BloomConfig(vocab_size=256, hidden_size=64,
                                                                            n_layer=2, n_head=4)))
    llm = LLM(bloom)
    assert llm.engine.native_plan() is None and "ALiBi" in llm.engine.native_plan_reason
    gen = GenerationConfig(max_new_tokens=4, ignore_eos=True)
    assert len(llm.generate_ids([[1, 2, 3]], gen)[0]) == 4
    gpt2 = save(tmp_path_factory, "gpt2", T.GPT2LMHeadModel(T.GPT2Config(vocab_size=256, n_embd=64, n_layer=2,
                                                                          n_head=4, n_positions=64)))
    assert LLM(gpt2).engine.native_plan() is not None
    bf16 = LLM(gpt2, dtype="bfloat16")
    assert bf16.engine.native_plan() is None and "fp32" in bf16.engine.native_plan_reason


WIDE = dict(vocab_size=320, max_position_embeddings=256)  # widths multiples of 32 for the int8 kernels
FAMILIES = {
    "gpt_neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**WIDE, hidden_size=128, intermediate_size=256,
                                                             num_hidden_layers=2, num_attention_heads=4)),
    "gptj": lambda: T.GPTJForCausalLM(T.GPTJConfig(**WIDE, n_embd=128, n_inner=256, n_layer=2, n_head=4,
                                                   rotary_dim=16, n_positions=256)),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(**WIDE, n_embd=128, n_layer=2, n_head=4, n_positions=256)),
    "falcon_new_arch": lambda: T.FalconForCausalLM(T.FalconConfig(
        vocab_size=320, hidden_size=128, num_hidden_layers=2, num_attention_heads=8, num_kv_heads=2,
        new_decoder_architecture=True)),
    "phi": lambda: T.PhiForCausalLM(T.PhiConfig(**WIDE, hidden_size=128, intermediate_size=256,
                                                num_hidden_layers=2, num_attention_heads=4)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layer_norm_parallel_and_plain_mlp_families_quantized(tmp_path_factory, family):
    """LayerNorm, parallel blocks (one norm or two) and GELU MLPs, with int8 weights and biases."""
    llm = LLM(save(tmp_path_factory, family, FAMILIES[family]()), quantize="int8")
    assert llm.engine.native_plan() is not None, llm.engine.native_plan_reason
    assert_same_step(decode_both(llm, [[4, 5, 6, 7, 8], [9, 10, 11]]))


def test_a_plan_the_kernels_refuse_falls_back(llama_path, monkeypatch):
    llm = LLM(llama_path)

    def refuse(model):
        raise RuntimeError("DecodePlan: qkv must be [256, 128]\nmore detail")

    monkeypatch.setattr(native_step, "build", refuse)
    assert llm.engine.native_plan() is None
    assert llm.engine.native_plan_reason == "the native step refused the model: DecodePlan: qkv must be [256, 128]"
    assert len(llm.generate_ids([[1, 2, 3]], GenerationConfig(max_new_tokens=3, ignore_eos=True))[0]) == 3


def test_phase_profile(llama_path):
    """set_profiling books every phase's time; phase_seconds returns the 12 counters and resets them."""
    llm = LLM(llama_path)
    plan = llm.engine.native_plan()
    cache = llm.engine.new_cache(1, 16)
    x, mask, no_rope = torch.zeros(1, 128), torch.ones(1, 1, 1, 4, dtype=torch.bool), torch.empty(0)
    plan.step(x, no_rope, no_rope, cache.k, cache.v, 3, mask)
    assert plan.phase_seconds() == [0.0] * 12  # off by default
    plan.set_profiling(True)
    for _ in range(3):
        plan.step(x, no_rope, no_rope, cache.k, cache.v, 3, mask)
    phases = plan.phase_seconds()
    assert len(phases) == 12 and all(p >= 0 for p in phases) and sum(phases) > 0
    assert plan.phase_seconds() == [0.0] * 12


def test_kv_cache_dtype_defaults(llama_path):
    """fp16 keys and values by default where activations are rounded anyway (quantized weights at act-bits
    16 or 8 on the CPU); fp32 for dense weights, for act-bits 32 (eval's exact scoring) and when asked."""
    assert LLM(llama_path, quantize="int4").engine.kv_dtype == torch.float16
    assert LLM(llama_path, quantize="int8", act_bits=8).engine.kv_dtype == torch.float16
    assert LLM(llama_path, quantize="int4", act_bits=32).engine.kv_dtype == torch.float32
    assert LLM(llama_path, quantize="int4", kv_cache_dtype="float32").engine.kv_dtype == torch.float32
    assert LLM(llama_path).engine.kv_dtype == torch.float32


@pytest.mark.parametrize("case", ["ties", "nan"])
def test_greedy_tokens_follow_numpy(llama_path, case):
    """step_tokens' greedy token is numpy's argmax (the first maximum, or the first NaN) across the
    threads' shares of the head: equal maxima at rows 5 and 300 (one in each thread's half), and
    NaN logits at rows 7 and 290."""
    llm = LLM(llama_path)
    eng = llm.engine
    head = eng.model.lm_head.weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            w = saved[1]
            if case == "ties":
                head.copy_(-w.expand_as(head))
                head[5] = head[300] = w  # 5 and 300 are the maxima, or everything else ties at the top
            else:
                head[7] = head[290] = float("nan")
        plan = eng.native_plan()
        batch_in = Prompts.pad([[3, 4, 5, 6], [7, 8]], 0, eng.device)
        B, P = batch_in.tokens.shape
        cache = eng.new_cache(B, P + 4)
        batch, key_valid, pos = eng.prefill_batch(batch_in, P + 4)
        eng.forward(batch_in.tokens, batch, cache, True)
        for i, feed in enumerate(([9, 10], [11, 12], [13, 14])):
            greedy = torch.empty(B, dtype=torch.long)
            logits = plan.step_tokens(torch.tensor(feed), pos, cache.k, cache.v, P + i, key_valid, 0, greedy)
            expected = logits.numpy().argmax(-1).tolist()
            assert greedy.tolist() == expected
            assert set(expected) <= ({7} if case == "nan" else {0, 5})
    finally:
        with torch.no_grad():
            head.copy_(saved)


def test_sliding_window(tmp_path_factory):
    """A sliding attention window (Mistral): step_tokens masks the slots that left it, as the op-by-op
    path's windowed mask does."""
    torch.manual_seed(0)
    cfg = T.MistralConfig(**DIMS, num_key_value_heads=2, sliding_window=16)
    llm = LLM(save(tmp_path_factory, "mistral_window", T.MistralForCausalLM(cfg)))
    assert llm.config.sliding_window == 16
    assert_same_step(decode_both(llm, [list(range(3, 40)), list(range(5, 20))], steps=4))


@pytest.mark.parametrize("quantize", [None, "int4"])
def test_qk_norms(tmp_path_factory, quantize):
    """Norms over each head of q and k before rope (Qwen3), with a head size that is not hidden / heads."""
    torch.manual_seed(0)
    cfg = T.Qwen3Config(**DIMS, num_key_value_heads=2, head_dim=64)
    llm = LLM(save(tmp_path_factory, "qwen3", T.Qwen3ForCausalLM(cfg)), quantize=quantize)
    assert llm.config.qk_norm
    # with rounded activations, the head norms (which rescale each head) amplify the codes the fp32 sums
    # in another order turn: 10x the tolerance
    assert_same_step(decode_both(llm, [list(range(3, 45)), list(range(5, 20))], steps=3),
                     atol=1e-4 if quantize is None else 1e-3)
