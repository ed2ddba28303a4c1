"""LoRA adapters in PEFT's layout: logits equal to peft's merged model (fused q/k/v and gate/up rows,
GPT-2's Conv1D layout), unmerged equal to merged, one adapter per request, and clear errors."""
import json

import pytest
import torch

peft = pytest.importorskip("peft")
import transformers as T  # noqa: E402

from family_configs.gpt2 import gpt2  # noqa: E402
from family_configs.llama import llama  # noqa: E402
from lmforge import LLM  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402

LLAMA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IDS = torch.tensor([[5, 17, 99, 3, 42, 7, 250, 11]])


def make_adapter(base, path, modules, seed, **options):
    """Save a LoRA adapter with random (non-zero) A and B; return peft's merged model."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=modules, init_lora_weights=False, **options)
    model = peft.get_peft_model(base, config)
    model.save_pretrained(path)
    return model.merge_and_unload().eval()


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llama")
    llama().save_pretrained(path)
    return path


def load_hf(path):
    return T.AutoModelForCausalLM.from_pretrained(path).eval()


def max_diff(llm, hf_model) -> float:
    with torch.no_grad():
        ref = hf_model(IDS).logits.float()
    return (llm.score(IDS) - ref).abs().max().item()


@pytest.mark.parametrize("rslora", [False, True])
def test_llama_merged_equals_peft(llama_base, tmp_path, rslora):
    merged = make_adapter(load_hf(llama_base), tmp_path / "a", LLAMA_MODULES, 1, use_rslora=rslora)
    assert max_diff(LLM(str(llama_base), adapters=tmp_path / "a"), merged) <= 1e-4
    assert max_diff(LLM(str(llama_base)), merged) > 1e-3  # the adapter really changes the logits


def test_gpt2_conv1d_fused_qkv_equals_peft(tmp_path):
    torch.manual_seed(0)
    gpt2().save_pretrained(tmp_path / "base")
    merged = make_adapter(load_hf(tmp_path / "base"), tmp_path / "a", ["c_attn", "c_fc"], 2, fan_in_fan_out=True)
    assert max_diff(LLM(str(tmp_path / "base"), adapters=tmp_path / "a"), merged) <= 1e-4


def test_unmerged_per_request(llama_base, tmp_path):
    merged_a = make_adapter(load_hf(llama_base), tmp_path / "a", ["q_proj", "v_proj", "up_proj"], 3)
    merged_b = make_adapter(load_hf(llama_base), tmp_path / "b", ["k_proj", "gate_proj"], 4)
    llm = LLM(str(llama_base), adapters={"a": tmp_path / "a", "b": tmp_path / "b"}, merge_adapters=False)
    base = LLM(str(llama_base))
    for name, ref in (("a", merged_a), ("b", merged_b)):
        with llm.use_adapter(name):
            assert max_diff(llm, ref) <= 1e-4
    assert torch.equal(llm.score(IDS), base.score(IDS))  # none active outside the block
    ids = IDS[0].tolist()
    from lmforge.generation.sampling import GenerationConfig
    gen = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    with llm.use_adapter("a"):
        ours = llm.generate_ids([ids], gen)[0]
    assert ours == LLM(str(llama_base), adapters=tmp_path / "a").generate_ids([ids], gen)[0]
    with pytest.raises(LmforgeError, match="no adapter named 'c'"):
        with llm.use_adapter("c"):
            pass


def test_errors(llama_base, tmp_path):
    # an adapter made for GPT-2 on a Llama model
    torch.manual_seed(0)
    gpt2().save_pretrained(tmp_path / "gpt2")
    make_adapter(load_hf(tmp_path / "gpt2"), tmp_path / "gpt2_lora", ["c_attn"], 5, fan_in_fan_out=True)
    with pytest.raises(LmforgeError, match="made for another architecture"):
        LLM(str(llama_base), adapters=tmp_path / "gpt2_lora")
    # rank in adapter_config.json disagrees with the tensors
    make_adapter(load_hf(llama_base), tmp_path / "a", ["q_proj"], 6)
    cfg_path = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "r": 8}))
    with pytest.raises(LmforgeError, match="rank mismatch"):
        LLM(str(llama_base), adapters=tmp_path / "a")
    # an adapter for a wider model of the same architecture
    wide = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=256, hidden_size=96, intermediate_size=112,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    make_adapter(wide, tmp_path / "wide", ["q_proj"], 7)
    with pytest.raises(LmforgeError, match="model of another size"):
        LLM(str(llama_base), adapters=tmp_path / "wide")
    with pytest.raises(LmforgeError, match="not a PEFT adapter folder"):
        LLM(str(llama_base), adapters=tmp_path)
    with pytest.raises(LmforgeError, match="cannot all be merged"):
        LLM(str(llama_base), adapters=[tmp_path / "a", tmp_path / "wide"])


def test_cli_adapter_for_another_architecture_is_one_line(stories, tmp_path, capsys):
    from lmforge.cli import main
    torch.manual_seed(0)
    gpt2().save_pretrained(tmp_path / "gpt2")
    make_adapter(load_hf(tmp_path / "gpt2"), tmp_path / "lora", ["c_attn"], 5, fan_in_fan_out=True)
    capsys.readouterr()  # drop what transformers printed while saving
    assert main(["generate", "--model", str(stories), "Once", "--max-new-tokens", "2",
                 "--adapter", str(tmp_path / "lora")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made for another architecture" in err[0]
