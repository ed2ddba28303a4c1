"""GGUF files: tiny transformers models written with gguf.GGUFWriter (q/k permuted as llama.cpp's
converter does, weights quantized or raw-packed), the default SmolLM2 GGUF against transformers' own
GGUF loader, and bad files."""
import math
import re
import shutil

import numpy as np
import pytest
import torch
import transformers as T
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, quants

from conftest import SHARED, need
from lmforge import LLM, kernels
from lmforge.errors import LmforgeError
from lmforge.generation.sampling import GenerationConfig
from lmforge.io.gguf import GGUFSource, dequantize, open_reader, rope_rows

ATOL = 1e-4
DIMS = dict(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
# K-quants: byte offset -> value of the fp16 scales in each random block (d, and dmin chosen so that
# the weights have zero mean: a common offset would hide a wrong q/k row order)
K_QUANTS = {Q.Q4_K: {0: 1e-3, 2: 7.5e-3}, Q.Q5_K: {0: 1e-3, 2: 1.55e-2}, Q.Q6_K: {208: 2e-4}}


# ------------------------------------------------------------------------------ writing GGUFs

def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to q/k rows (halves -> interleaved pairs)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def pack(w: np.ndarray, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Bytes of ``w`` in ``qtype``; K-quants (no quantizer in gguf-py) get random blocks of w's size."""
    if qtype in K_QUANTS:
        block_elems, block_bytes = quants.GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, (w.shape[0], w.shape[1] // block_elems, block_bytes), dtype=np.uint8)
        for offset, value in K_QUANTS[qtype].items():
            blocks[:, :, offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
        return blocks.reshape(w.shape[0], -1)
    return quants.quantize(w, qtype)


def gguf_name(hf_name: str) -> str:
    parts = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in parts:
        return parts[hf_name]
    layer, rest = hf_name.split(".")[2], ".".join(hf_name.split(".")[3:])
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{names[module]}.{kind}"


def write_gguf(hf, path, arch="llama", qtype=Q.F32, rope_freqs=None, seed=0, types=None):
    """A GGUF of ``hf`` as llama.cpp writes it; 2-D weights in ``qtype`` (or ``types[pattern]`` for the
    GGUF names that match the regular expression ``pattern``), norms and biases in F32."""
    c = hf.config
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim != c.hidden_size // c.num_attention_heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(c.vocab_size)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    for name, t in hf.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        a = t.float().numpy()
        if arch == "llama" and "q_proj" in name:
            a = llama_cpp_permute(a, c.num_attention_heads)
        if arch == "llama" and "k_proj" in name:
            a = llama_cpp_permute(a, c.num_key_value_heads)
        kind = next((t for pattern, t in (types or {}).items() if re.search(pattern, gguf_name(name))), qtype)
        if a.ndim == 2 and kind != Q.F32:
            w.add_tensor(gguf_name(name), pack(a, kind, rng), raw_dtype=kind)
        else:
            w.add_tensor(gguf_name(name), np.ascontiguousarray(a))
    return finish(w, path)


def finish(writer: GGUFWriter, path):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def hf_from_gguf(path):
    """transformers' reading of a GGUF (what ``from_pretrained(folder, gguf_file=name)`` does, without
    needing accelerate): its config, its dequantization and its q/k un-permutation."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = T.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    model = T.AutoModelForCausalLM.from_config(config)
    state = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict(state, strict=not config.tie_word_embeddings)
    model.tie_weights()
    return model.eval()


def llama3_rope_freqs(c) -> np.ndarray:
    """llama.cpp's rope_freqs.weight: the per-frequency divisor of llama3 rope scaling."""
    rope = c.rope_parameters
    hd = c.hidden_size // c.num_attention_heads
    freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    wavelen = 2 * math.pi / freqs
    low, high = rope["original_max_position_embeddings"] / rope["low_freq_factor"], \
        rope["original_max_position_embeddings"] / rope["high_freq_factor"]
    smooth = (rope["original_max_position_embeddings"] / wavelen - rope["low_freq_factor"]) / \
        (rope["high_freq_factor"] - rope["low_freq_factor"])
    divisor = np.where(wavelen < high, 1.0, np.where(wavelen > low, rope["factor"],
                                                     1.0 / ((1 - smooth) / rope["factor"] + smooth)))
    return divisor.astype(np.float32)


def ids(n, vocab, seed):
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def assert_logits_match(llm, hf, atol=ATOL):
    x = ids(16, hf.config.vocab_size, 1)
    with torch.no_grad():
        ref = hf(x).logits
    err = (llm.score(x) - ref).abs().max().item()
    # fp32 sums in another order differ in proportion to their size: atol is for logits of size <= 1
    tol = atol * max(1.0, ref.abs().max().item())
    assert err <= tol, f"max abs logit difference {err:.2e} (logits up to {ref.abs().max().item():.1f})"


# ------------------------------------------------------------------------ tiny-model parity

def tiny(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(**DIMS)).eval()
    if kind == "llama_tied":
        return T.LlamaForCausalLM(T.LlamaConfig(**DIMS, tie_word_embeddings=True)).eval()
    if kind == "llama3_rope":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        return T.LlamaForCausalLM(T.LlamaConfig(**DIMS, rope_parameters=rope)).eval()
    if kind == "qwen2":
        return T.Qwen2ForCausalLM(T.Qwen2Config(**DIMS, tie_word_embeddings=True)).eval()
    if kind == "qwen3":  # q/k norms, a head size (128) that is not hidden / heads
        return T.Qwen3ForCausalLM(T.Qwen3Config(**DIMS, head_dim=128, tie_word_embeddings=True)).eval()
    raise ValueError(kind)


def arch_of(kind: str) -> str:
    return kind if kind in ("qwen2", "qwen3") else "llama"


@pytest.mark.parametrize("kind", ["llama", "llama_tied", "qwen2", "qwen3"])
def test_fp32_gguf_matches_transformers_model(kind, tmp_path):
    hf = tiny(kind)
    path = write_gguf(hf, tmp_path / f"{kind}.gguf", arch=arch_of(kind))
    llm = LLM(str(path))
    assert llm.config.tie_embeddings == hf.config.tie_word_embeddings
    assert llm.config.qkv_bias == (kind == "qwen2")
    assert llm.config.qk_norm == (kind == "qwen3")
    assert_logits_match(llm, hf)


def test_llama3_rope_freqs_become_llama3_scaling(tmp_path):
    hf = tiny("llama3_rope")
    path = write_gguf(hf, tmp_path / "l3.gguf", rope_freqs=llama3_rope_freqs(hf.config))
    llm = LLM(str(path))
    assert llm.config.rope_scaling["rope_type"] == "llama3"
    assert_logits_match(llm, hf)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q5_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K],
                         ids=lambda q: q.name)
def test_quantized_gguf_matches_transformers_reading(qtype, tmp_path):
    path = write_gguf(tiny("llama"), tmp_path / f"{qtype.name}.gguf", qtype=qtype)
    hf = hf_from_gguf(path)
    llm = LLM(str(path), dequantize=True)  # the same float weights transformers reads
    described = llm.source.describe()["quantization"]
    assert (qtype.name in described) if qtype.name.startswith("Q") else described is None
    assert_logits_match(llm, hf)


@pytest.mark.parametrize("kind", ["llama", "llama_tied", "qwen2", "qwen3"])
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q5_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda q: q.name)
def test_native_blocks_match_their_definition(qtype, kind, tmp_path):
    """Q4_0 / Q4_1 / Q4_K / Q5_0 / Q5_K / Q6_K / Q8_0 run natively: every decoder Linear (and the embedding, and a tied head)
    keeps the file's blocks, and the logits are those of the dequantized weights."""
    from lmforge.quant.linear import BLOCK_FORMATS, BlockEmbedding, TiedHead

    path = write_gguf(tiny(kind), tmp_path / f"{kind}-{qtype.name}.gguf", arch=arch_of(kind), qtype=qtype)
    native, floats = LLM(str(path), act_bits=32), LLM(str(path), dequantize=True)  # fp32 activations: exact
    linears = [m for layer in native.model.layers for m in (layer.attn.wqkv, layer.attn.wo, layer.mlp.w_in,
                                                            layer.mlp.w_out)]
    assert all(isinstance(m, BLOCK_FORMATS) for m in linears)
    assert isinstance(native.model.embed, BlockEmbedding)
    assert isinstance(native.model.lm_head, TiedHead) == native.config.tie_embeddings
    assert not any(p.dtype == torch.float32 and p.dim() == 2 and not name.endswith("scales")  # no float weight
                   for name, p in native.model.state_dict().items())
    if qtype == Q.Q4_K:  # K-quant scales and mins: the file's steps and 6-bit multipliers
        assert linears[0].scales.dtype == linears[0].mins.dtype == torch.uint8
    if qtype == Q.Q5_K:  # int8 codes 0..31 (plain, or grouped with VNNI), K-quant scales and mins per 32 columns
        assert linears[0].scales.dtype == linears[0].mins.dtype == torch.uint8
        assert linears[0].mins.shape == linears[0].scales.shape == (linears[0].out_features, linears[0].in_features // 256 * 10)
    if qtype == Q.Q6_K:  # int8 codes (plain, or grouped with VNNI), K-quant scales per 16 columns (two
        # records of 10 bytes per 256)
        assert linears[0].scales.dtype == torch.uint8
        assert linears[0].scales.shape[1] == linears[0].in_features // 128 * 10 and linears[0].mins.numel() == 0
    x = ids(16, native.config.vocab_size, 1)
    ours, ref = native.score(x), floats.score(x)
    # the same products, summed in another order; the random K-quant blocks, whose sub-block scales (and
    # mins) vary 64-fold or more, make logits of ~17 where the others give ~1.5: within ATOL of their scale
    tol = ATOL * (ref.abs().max().item() if qtype in K_QUANTS else 1.0)
    assert (ours - ref).abs().max() <= tol
    # the cached decode path (one row per step through the kernels) agrees with scoring the whole text
    prompt = x[0, :6].tolist()
    out = native.generate_ids([prompt], GenerationConfig(max_new_tokens=8, min_new_tokens=8, ignore_eos=True))[0]
    assert native.score(torch.tensor([prompt + out]))[0, 5:-1].argmax(-1).tolist() == out


def test_q4_k_m_mix_runs_natively(tmp_path):
    """A Q4_K_M-style file (Q4_K, with attn_v, ffn_down of layer 1 and the head in Q6_K) runs all natively:
    the Q4_K modules as int4, the Q6_K ones as int8 with half-block scales, the fused q/k/v as a
    PartsLinear of both (q and k int4, v int8); the logits are those of the dequantized file."""
    from lmforge.quant.linear import BlockEmbedding, BlockInt4Linear, BlockInt8Linear, PartsLinear

    types = {r"attn_v\.": Q.Q6_K, r"blk\.1\.ffn_down\.": Q.Q6_K, r"^output\.": Q.Q6_K}
    path = write_gguf(tiny("llama"), tmp_path / "q4_k_m.gguf", qtype=Q.Q4_K, types=types)
    native, floats = LLM(str(path), act_bits=32), LLM(str(path), dequantize=True)
    layers = native.model.layers
    assert all(isinstance(m, BlockInt4Linear) for m in (layers[0].attn.wo, layers[0].mlp.w_in, layers[0].mlp.w_out,
                                                        layers[1].mlp.w_in))
    assert isinstance(layers[1].mlp.w_out, BlockInt8Linear) and isinstance(native.model.lm_head, BlockInt8Linear)
    w_out = layers[1].mlp.w_out
    assert w_out.scales.shape == (w_out.out_features, w_out.in_features // 128 * 10)  # K-quant records
    for layer in layers:
        qkv = layer.attn.wqkv
        assert isinstance(qkv, PartsLinear) and [type(p) for p in qkv.parts] == [BlockInt4Linear, BlockInt8Linear]
        kv_rows = DIMS["num_key_value_heads"] * DIMS["hidden_size"] // DIMS["num_attention_heads"]
        assert [p.out_features for p in qkv.parts] == [DIMS["hidden_size"] + kv_rows, kv_rows]
    assert isinstance(native.model.embed, BlockEmbedding) and not native.config.tie_embeddings
    # what runs how, as `lmforge bench` reports it
    from types import SimpleNamespace

    from lmforge.bench.command import quantization_label

    assert native.source.native_types == {"Q4_K": 12, "Q6_K": 4} and not native.source.dequantized_types
    args = SimpleNamespace(quantize=None, dequantize=False, dtype="float32", act_bits=32)
    assert quantization_label(native, args).endswith("; Q4_K/Q6_K run natively, decode activations fp32")
    x = ids(16, native.config.vocab_size, 1)
    ref = floats.score(x)
    assert (native.score(x) - ref).abs().max() <= ATOL * max(1.0, ref.abs().max().item())
    # at the default act_bits 16 (prompt and native decode step) the K-quant scales and mins compute what
    # fp32 ones of the same values compute, to the bit
    from lmforge.kernels.reference import block_values

    packed, twin = LLM(str(path)), LLM(str(path))
    for module in twin.model.modules():
        if isinstance(module, BlockInt4Linear):
            module.scales, module.mins = block_values(module.scales), block_values(module.mins)
    assert torch.equal(packed.score(x), twin.score(x))
    config = GenerationConfig(max_new_tokens=8, min_new_tokens=8, ignore_eos=True)
    assert packed.generate_ids([x[0, :6].tolist()], config) == twin.generate_ids([x[0, :6].tolist()], config)
    assert packed.engine.native_plan() is not None or kernels.backend() != "native"


def test_q8_0_plain_and_grouped_layouts_load_the_same_weights(monkeypatch, tmp_path):
    """Q8_0 is repacked grouped (uint8) where the kernels have VNNI and plain (int8) elsewhere; either
    way the model loads the file's weights (the loader keeps the codes' dtype) and decodes alike."""
    from lmforge.kernels import build

    if kernels.backend() != "native":
        pytest.skip("the layout choice is the native kernels'")
    path = write_gguf(tiny("llama_tied"), tmp_path / "q8.gguf", arch="llama", qtype=Q.Q8_0)
    floats = LLM(str(path), dequantize=True)
    x = ids(16, floats.config.vocab_size, 1)
    ref, outs = floats.score(x), []
    for grouped, dtype in ((True, torch.uint8), (False, torch.int8)):
        monkeypatch.setattr(build, "builds_vnni", lambda: grouped)
        llm = LLM(str(path), act_bits=32)
        assert llm.model.embed.table.q.dtype == llm.model.layers[0].mlp.w_in.q.dtype == dtype
        assert (llm.score(x) - ref).abs().max() <= ATOL
        outs.append(llm.generate_ids([x[0, :6].tolist()], GenerationConfig(max_new_tokens=8, min_new_tokens=8,
                                                                            ignore_eos=True))[0])
    assert outs[0] == outs[1]


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda q: q.name)
def test_dequantization_matches_transformers_kernels(qtype, tmp_path):
    """Our dequantization (gguf-py, numpy) against transformers' own torch implementation (which has no
    Q5_0)."""
    from transformers.integrations.gguf.dequant import dequantize as hf_dequantize

    w = np.random.default_rng(1).standard_normal((8, 512)).astype(np.float32)
    packed = pack(w, qtype, np.random.default_rng(2))
    path = tmp_path / "one.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("t", packed, raw_dtype=qtype)
    finish(writer, path)
    ours = dequantize(open_reader(path).tensors[0], path)
    ref = hf_dequantize(torch.from_numpy(packed.copy()).reshape(-1), int(qtype)).reshape(8, 512)
    assert ours.shape == (8, 512)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)


def test_rope_rows_undo_llama_cpp_permutation():
    w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)  # 2 heads of dim 8, 3 input features
    permuted = torch.from_numpy(llama_cpp_permute(w, 2))
    assert torch.equal(permuted[rope_rows(2, 8)], torch.from_numpy(w))
    # rows move whole, so packed rows (bytes) follow the same order
    packed = torch.from_numpy(quants.quantize(np.repeat(w, 32, axis=1), Q.Q8_0))
    assert packed[rope_rows(2, 8)].shape == packed.shape


# --------------------------------------------------------------------- the default SmolLM2 GGUF

@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    """The default model dequantized (the float weights transformers reads), and transformers' model."""
    return LLM(dequantize=True), hf_from_gguf(smollm2_path)


@pytest.fixture(scope="module")
def smollm2_native():
    """The default model as it runs by default: its Q4_1 / Q8_0 blocks on the native kernels."""
    return LLM()


def wikitext_ids(tokenizer, n=4096):
    text = need(SHARED / "data/wikitext-2-raw/wikitext-2-raw-v1.test.joined.txt").read_text(encoding="utf-8")
    x = torch.tensor([tokenizer.encode(text[:40000])[:n]])  # one tokenization, fed to every model
    assert x.shape[1] == n
    return x


def perplexity(logits, x):  # logits: [1, S, V]
    return math.exp(torch.nn.functional.cross_entropy(logits[0, :-1].float(), x[0, 1:]).item())


def test_default_model_runs_natively_and_answers(smollm2_native):
    from lmforge.quant.linear import BlockInt4Linear

    llm = smollm2_native
    assert isinstance(llm.model.layers[0].mlp.w_in, BlockInt4Linear)
    assert llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                    max_new_tokens=32) == "The capital of France is Paris."


def decode_logits(llm, x, start):
    """Logits of every position from `start` on, one cached decode step per token (teacher forcing)."""
    from lmforge.generation.engine import Prompts

    eng, n = llm.engine, x.shape[1]
    prompt = Prompts.pad([x[0, :start].tolist()], 0, eng.device)
    cache = eng.new_cache(1, n)
    batch, key_valid, pos = eng.prefill_batch(prompt, n)
    out = [eng.forward(prompt.tokens, batch, cache, True)[0, -1]]
    for i in range(start, n - 1):
        out.append(eng.forward(x[:, i:i + 1], eng.decode_batch(i, key_valid, pos), cache, True)[0, -1])
    return torch.stack(out)  # [n - start, V]: predictions for tokens start .. n - 1


def test_decode_activation_rounding_on_the_default_model(smollm2_native):
    """act_bits 16 (the default) keeps decode logits within a few hundredths of fp32 activations and
    every top-1 token; 8 (llama.cpp's rounding) moves them more but keeps the loss within a percent."""
    from lmforge.quant.linear import set_activation_bits

    llm = smollm2_native
    x = wikitext_ids(llm.tokenizer, 96)
    target = x[0, 8:]
    try:
        runs = {}
        for bits in (32, 16, 8):
            set_activation_bits(llm.model, bits)
            runs[bits] = decode_logits(llm, x, 8)
    finally:
        set_activation_bits(llm.model, 16)
    loss = {b: torch.nn.functional.cross_entropy(lg, target).item() for b, lg in runs.items()}
    print(f"decode loss act32 {loss[32]:.5f} act16 {loss[16]:.5f} act8 {loss[8]:.5f}; "
          f"max |dlogit| act16 {(runs[16] - runs[32]).abs().max():.4f} act8 {(runs[8] - runs[32]).abs().max():.4f}")
    assert (runs[16] - runs[32]).abs().max() < 0.1
    assert torch.equal(runs[16].argmax(-1), runs[32].argmax(-1))
    assert abs(loss[8] / loss[32] - 1) < 0.01


def test_fp16_kv_cache_on_the_default_model(smollm2_native):
    """The default fp16 KV cache against an fp32 one, both at fp32 activations: logits within a few
    hundredths (0.025 measured), every top-1 token kept."""
    from lmforge.quant.linear import set_activation_bits

    x = wikitext_ids(smollm2_native.tokenizer, 96)
    exact = LLM(act_bits=32, kv_cache_dtype="float32")
    try:
        set_activation_bits(smollm2_native.model, 32)
        half = decode_logits(smollm2_native, x, 8)
    finally:
        set_activation_bits(smollm2_native.model, 16)
    full = decode_logits(exact, x, 8)
    assert smollm2_native.engine.kv_dtype == torch.float16 and exact.engine.kv_dtype == torch.float32
    assert (half - full).abs().max() < 0.1
    assert torch.equal(half.argmax(-1), full.argmax(-1))


def test_native_perplexity_is_within_a_percent_of_the_float_weights(smollm2, smollm2_native):
    floats, _ = smollm2
    x = wikitext_ids(floats.tokenizer, 1024)
    ours, ref = perplexity(smollm2_native.score(x), x), perplexity(floats.score(x), x)
    print(f"SmolLM2 Q4_1 wikitext-2 perplexity, first 1024 tokens: native {ours:.4f}, dequantized {ref:.4f}")
    assert abs(ours / ref - 1) < 0.01


def test_default_model_answers_and_stops_at_end_of_turn(smollm2):
    llm, _ = smollm2
    assert llm.source.format == "gguf" and llm.source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = llm.generate_ids([llm.tokenizer.encode_chat(msgs)], GenerationConfig(max_new_tokens=32), chat=True)[0]
    assert ids[-1] == llm.tokenizer.token_to_id("<|im_end|>") and len(ids) < 32
    assert llm.chat(msgs, max_new_tokens=32) == "The capital of France is Paris."


def test_default_model_perplexity_matches_transformers(smollm2):
    llm, hf = smollm2
    x = wikitext_ids(llm.tokenizer)
    ours = perplexity(llm.score(x), x)
    with torch.no_grad():
        theirs = perplexity(hf(x).logits, x)
    print(f"SmolLM2 Q4_1 wikitext-2 perplexity, first 4096 tokens: lmforge {ours:.4f}, transformers {theirs:.4f}")
    assert abs(ours / theirs - 1) < 0.005


@pytest.mark.parametrize("prompt", ["What is the capital of France?", "Name three colors.",
                                    "Write a haiku about the sea."])
@pytest.mark.parametrize("native", [False, True], ids=["dequantized", "native"])
def test_default_model_greedy_chat_matches_transformers(smollm2, smollm2_native, prompt, native):
    """The float weights, and the model as it runs by default (Q4_1 kernels, activations rounded to two
    int8 planes, fp16 KV cache), pick transformers' greedy tokens."""
    llm, hf = smollm2
    if native:
        llm = smollm2_native
        assert llm.engine.kv_dtype == torch.float16
    tok = llm.tokenizer
    prompt_ids = tok.encode_chat([{"role": "user", "content": prompt}])
    ours = llm.generate_ids([prompt_ids], GenerationConfig(max_new_tokens=24), chat=True)[0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=24, eos_token_id=sorted(tok.stop_ids),
                          pad_token_id=tok.token_to_id("<|endoftext|>"))[0, len(prompt_ids):].tolist()
    assert ours == ref


def test_info_describes_quantization(smollm2_path):
    from lmforge.inspect import describe

    info = describe(smollm2_path)
    assert info["format"] == "GGUF v3" and info["weights dtype"] == "Q4_1"
    assert "Q4_1 x210" in info["quantization"] and "Q8_0 x1" in info["quantization"]


# ------------------------------------------------------------------------------- bad files

def test_truncated_gguf(tmp_path):
    good = write_gguf(tiny("llama"), tmp_path / "good.gguf")
    data = good.read_bytes()
    for cut in (100, len(data) // 2, len(data) - 8):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(LmforgeError, match="truncated or corrupt"):
            LLM(str(bad))


def test_native_blocks_of_the_wrong_size_are_one_clear_error(tmp_path):
    from types import SimpleNamespace

    from lmforge.io.gguf import repack

    for nbytes in (37, 38):  # not two rows; two rows but not whole 18-byte Q4_0 blocks
        t = SimpleNamespace(name="blk.0.attn_q.weight", shape=np.array([32, 2]), data=np.zeros(nbytes, np.uint8),
                            tensor_type=Q.Q4_0)
        with pytest.raises(LmforgeError, match="truncated or corrupt"):
            repack(t, tmp_path / "x.gguf")


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_text("this is not a model\n" * 20)
    with pytest.raises(LmforgeError, match="not a readable GGUF file"):
        GGUFSource(bad)


def test_unsupported_gguf_architecture_lists_supported():
    vocab_only = need(SHARED / "gguf-vocab/ggml-vocab-falcon.gguf")
    with pytest.raises(LmforgeError, match=r"unsupported GGUF architecture 'falcon'; supported: llama, qwen2, qwen3"):
        GGUFSource(vocab_only)


def test_vocabulary_only_gguf_is_refused(tmp_path):
    vocab_only = need(SHARED / "gguf-vocab/ggml-vocab-llama-spm.gguf")
    shutil.copy(vocab_only, tmp_path / "v.gguf")
    with pytest.raises(LmforgeError, match="no token_embd.weight"):
        GGUFSource(tmp_path / "v.gguf")


def test_cli_reports_bad_gguf_in_one_line(tmp_path, capsys):
    from lmforge.cli import main

    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    code = main(["info", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and "\n" not in err and "GGUF" in err, err
