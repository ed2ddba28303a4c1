"""lmforge quantized folders: save -> load gives identical logits; atomic writes; on-the-fly quantization."""
import json

import pytest
import torch

from lmforge import LLM
from lmforge.cli import main
from lmforge.inspect import describe
from lmforge.io.native import MANIFEST
from lmforge.quant import make_spec, quantize_model, quantize_to_folder
from lmforge.quant.calibration import calibration_samples, default_text
from lmforge.quant.linear import Int4Linear, QuantLinear, decoder_linears

TOKENS = torch.tensor([[1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 266]])
SPECS = {
    "int8": dict(method="rtn", bits=8),
    "int4-asym-pc": dict(method="rtn", bits=4, group_size=-1, scheme="asym"),
    "gptq-act-order": dict(method="gptq", bits=4, group_size=-1, act_order=True),
    "awq": dict(method="awq", bits=4, group_size=-1),
    "w8a8-static": dict(method="smoothquant", alpha=0.6, act_quant="static"),
    "fp8": dict(method="fp8"),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_quantize_save_load_round_trip(stories, tmp_path, name):
    spec = make_spec(**SPECS[name])
    out = quantize_to_folder(stories, spec, tmp_path / "q", calib_samples=4, calib_seq_len=64, progress=False)
    reference = LLM(stories)
    calib = calibration_samples(reference.tokenizer.encode(default_text()), 4, 64)
    quantize_model(reference.model, spec, calib if spec.needs_calibration else None, progress=False)
    loaded = LLM(out)
    assert [type(m) for _, m in decoder_linears(loaded.model)] == [type(m) for _, m in decoder_linears(reference.model)]
    assert torch.equal(loaded.score(TOKENS), reference.score(TOKENS))
    manifest = json.loads((out / MANIFEST).read_text())
    q = manifest["quantization"]
    assert (q["method"], q["bits"], q["format"]) == (spec.method, spec.bits, spec.format)
    assert manifest["lmforge_version"] and manifest["config"]["dim"] == 64
    if spec.needs_calibration:
        assert (q["calibration"]["samples"], q["calibration"]["seq_len"]) == (4, 64)
    prompt = "Once upon a time"
    assert loaded.generate(prompt, max_new_tokens=8) == reference.generate(prompt, max_new_tokens=8)
    assert describe(out)["quantization"].startswith(spec.method)


def test_int4_folder_holds_a_fraction_of_the_fp32_weights(stories, tmp_path):
    out = quantize_to_folder(stories, make_spec("rtn", bits=4, group_size=-1), tmp_path / "q4", progress=False)
    stored = sum(b.numel() * b.element_size() for _, m in decoder_linears(LLM(out).model) for b in m.buffers())
    full = sum(m.weight.numel() * 4 for _, m in decoder_linears(LLM(stories).model))
    assert stored < full / 6


def test_on_the_fly_quantization_equals_rtn(stories):
    fly = LLM(stories, quantize="int4-gpc-asym")
    ref = LLM(stories)
    quantize_model(ref.model, make_spec("rtn", bits=4, group_size=-1, scheme="asym"), progress=False)
    assert torch.equal(fly.score(TOKENS), ref.score(TOKENS))
    assert all(isinstance(m, Int4Linear) for _, m in decoder_linears(fly.model))
    assert isinstance(LLM(stories, quantize="int8").model.layers[0].attn.wqkv, QuantLinear)


def test_bf16_int8_kernel_stays_as_close_as_bf16_itself(stories):
    spec = "int8"
    q_bf16 = LLM(stories, dtype="bfloat16", quantize=spec).score(TOKENS)
    q_fp32 = LLM(stories, quantize=spec).score(TOKENS)
    bf16, fp32 = LLM(stories, dtype="bfloat16").score(TOKENS), LLM(stories).score(TOKENS)
    assert (q_bf16 - q_fp32).abs().max() < 2 * (bf16 - fp32).abs().max()
    assert torch.equal(q_bf16.argmax(-1), q_fp32.argmax(-1))


def test_cli_quantize_then_generate(stories, tmp_path, capsys):
    out = tmp_path / "cli-q"
    assert main(["quantize", "--model", str(stories), "--method", "rtn", "--bits", "8", "--output", str(out)]) == 0
    assert main(["generate", "--model", str(out), "Once upon a time", "--max-new-tokens", "5", "--no-stream"]) == 0
    assert capsys.readouterr().out.startswith("Once upon a time")
    assert main(["quantize", "--model", str(stories), "--method", "fp8", "--output", str(out), "--force"]) == 0
    assert json.loads((out / MANIFEST).read_text())["quantization"]["method"] == "fp8"
    assert [p.name for p in tmp_path.iterdir()] == ["cli-q"]  # no temporary folder left


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_interrupted_run_leaves_no_folder(stories, tmp_path, monkeypatch):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _interrupt)
    assert main(["quantize", "--model", str(stories), "--method", "rtn", "--output", str(tmp_path / "q")]) == 130
    assert list(tmp_path.iterdir()) == []


def test_interrupted_force_keeps_the_old_folder(stories, tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "q"
    assert main(["quantize", "--model", str(stories), "--method", "rtn", "--output", str(out)]) == 0
    monkeypatch.setattr(safetensors.torch, "save_file", _interrupt)
    assert main(["quantize", "--model", str(stories), "--method", "fp8", "--output", str(out), "--force"]) == 130
    assert [p.name for p in tmp_path.iterdir()] == ["q"]
    assert json.loads((out / MANIFEST).read_text())["quantization"]["method"] == "rtn"


def test_gguf_tokenizer_saved_as_tokenizer_json_encodes_the_same(tmp_path):
    from conftest import SHARED, need

    from lmforge.io.gguf_vocab import tokenizer_from_gguf
    from lmforge.io.native import save_tokenizer
    from lmforge.tokenizer import Tokenizer

    gguf = tokenizer_from_gguf(need(SHARED / "gguf-vocab" / "ggml-vocab-llama-spm.gguf"))
    assert gguf.add_bos  # SentencePiece Llama: BOS is added in code, and must survive the save
    save_tokenizer(gguf, tmp_path)
    saved = Tokenizer.from_hf_folder(tmp_path, tiny_config())
    for text in ["Hello world", " leading space", "Ünïcödé and 123 numbers\nnew line"]:
        assert saved.encode(text) == gguf.encode(text)
    assert saved.decode(gguf.encode("Hello world")) == gguf.decode(gguf.encode("Hello world"))


def tiny_config():
    from lmforge.config import ModelConfig
    return ModelConfig(architecture="LlamaForCausalLM", vocab_size=32000, dim=8, n_layers=1, n_heads=1, hidden_dim=8)
