"""HF folder loading: sharded safetensors, .bin pickles, generation_config, tokenizers, chat templates."""
import json
import shutil

import pytest
import torch
import transformers as T

from conftest import SHARED, need
from lmforge import LLM, LmforgeError
from lmforge.cli import main
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return T.LlamaForCausalLM(cfg).eval()


def reference_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_sharded_safetensors(tiny_llama, tmp_path):
    tiny_llama.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    ids = torch.randint(0, 256, (1, 10))
    assert torch.allclose(LLM(str(tmp_path)).score(ids), reference_logits(tiny_llama, ids), atol=1e-4)


def test_missing_shard_is_a_clear_error(tiny_llama, tmp_path, capsys):
    tiny_llama.save_pretrained(tmp_path, max_shard_size="50KB")
    next(tmp_path.glob("model-*.safetensors")).unlink()
    assert main(["generate", "--model", str(tmp_path), "hi"]) == 2
    assert "missing" in capsys.readouterr().err


def test_pytorch_bin_checkpoint(tiny_llama, tmp_path):
    tiny_llama.save_pretrained(tmp_path)
    state = {k: v for k, v in tiny_llama.state_dict().items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    ids = torch.randint(0, 256, (1, 10))
    assert torch.allclose(LLM(str(tmp_path)).score(ids), reference_logits(tiny_llama, ids), atol=1e-4)


def test_pickle_with_code_is_refused(tiny_llama, tmp_path, capsys):
    tiny_llama.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"weights": object()}, tmp_path / "pytorch_model.bin")  # not plain tensors
    assert main(["generate", "--model", str(tmp_path), "hi"]) == 2
    assert "weights_only" in capsys.readouterr().err


def test_generation_config_eos_is_used(stories, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(stories, folder, ignore=shutil.ignore_patterns("llama2c"))
    dot = LLM(str(folder)).tokenizer.encode(".", add_special_tokens=False)[-1]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, dot]}))
    llm = LLM(str(folder))
    assert dot in llm.config.eos_token_ids
    assert llm.generate("Once upon a time", max_new_tokens=60)[0] == ", there was a little girl named Lily."


def test_chat_template_matches_transformers():
    folder = need(SHARED / "tokenizers" / "qwen2.5")
    template = (folder / "chat_template.jinja").read_text()
    tk = Tokenizer.from_hf_folder(folder, cfg=type("C", (), {"eos_token_ids": ()})())
    ref = T.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    ref.chat_template = template
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    want = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert tk.apply_chat_template(msgs) == want
    assert tk.encode_chat(msgs) == ref(want, add_special_tokens=False)["input_ids"]
    assert tk.token_to_id("<|im_end|>") in tk.stop_ids


@pytest.mark.parametrize("name", ["gpt2", "gpt-neox-20b", "llama2-spm", "qwen2.5"])
def test_tokenizer_round_trip_matches_transformers(name):
    folder = need(SHARED / "tokenizers" / name)
    tk = Tokenizer.from_hf_folder(folder, cfg=type("C", (), {"eos_token_ids": ()})())
    ref = T.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    text = "Hello world! Ünïcödé, tabs\tand  spaces — 1234 😀"
    assert tk.encode(text) == ref(text)["input_ids"]
    assert tk.decode(tk.encode(text, add_special_tokens=False)) == text


def test_interactive_chat_keeps_history(monkeypatch, capsys, smollm2_path):
    answers = iter(["What is the capital of France?", "And of Italy?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert main(["chat", "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "Rome" in out


def test_random_weights_from_a_config_alone(tiny_llama, tmp_path, capsys):
    """--random-weights: the shape of config.json with random weights, no checkpoint needed; the same
    weights each time; bad sources are named with the fix."""
    config = {**tiny_llama.config.to_dict(), "architectures": ["LlamaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(config))  # no weights, no tokenizer
    a = LLM(str(tmp_path), random_weights=True)
    b = LLM(str(tmp_path), random_weights=True)
    assert sum(p.numel() for p in a.model.parameters()) == sum(p.numel() for p in tiny_llama.parameters())
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert a.model.layers[0].attn_norm.weight.eq(1).all() and a.model.embed.weight.std() > 0.01
    ids = a.generate_ids([[3, 4, 5]], a._gen(max_new_tokens=4))
    assert len(ids[0]) == 4
    assert main(["bench", "-m", str(tmp_path), "--random-weights", "--random-prompt", "-p", "4", "-n", "4",
                 "--num-iter", "1", "--num-warmup", "0", "--no-roofline"]) == 0
    assert "with random weights" in capsys.readouterr().out
    (tmp_path / "config.json").unlink()
    with pytest.raises(LmforgeError, match="config.json"):
        LLM(str(tmp_path), random_weights=True)
    assert main(["bench", "-m", str(tmp_path), "--random-weights", "--random-prompt", "--no-roofline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lmforge: error:") and "config.json" in err[-1] and "Traceback" not in "\n".join(err)
