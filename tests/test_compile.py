"""--compile: decode steps through torch.compile (CUDA graphs on CUDA; here the CPU's Inductor). The
compiled step must give the logits and tokens of the op-by-op path, in one graph, keep one cache and one
graph for generations that fit the same cache length, and leave the native CPU step in charge where it
runs."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters

from lmforge import LLM, LmforgeError
from lmforge.generation.engine import COMPILE_BUCKET
from lmforge.generation.sampling import GenerationConfig
from lmforge.models import native_step


def greedy(llm, prompts, n):
    return llm.generate_ids([llm.tokenizer.encode(p) for p in prompts], GenerationConfig(max_new_tokens=n))


@pytest.mark.parametrize("dtype,quantize", [("bfloat16", None), ("float32", "int8")])
def test_compiled_decode_matches_op_by_op(stories, monkeypatch, dtype, quantize):
    monkeypatch.setenv(native_step.DISABLE_ENV, "0")  # fp32 too runs op by op (its kernels are custom ops)
    eager = LLM(str(stories), dtype=dtype, quantize=quantize)
    compiled = LLM(str(stories), dtype=dtype, quantize=quantize, compile=True)
    assert compiled.engine.native_plan() is None
    prompts = ["Once upon a time", "Tom and his mom went to the park"]
    counters.clear()
    assert greedy(compiled, prompts, 24) == greedy(eager, prompts, 24)
    assert not counters["graph_break"], dict(counters["graph_break"])  # one graph: CUDA graphs need it whole
    assert counters["stats"]["unique_graphs"] == 1, {k: dict(v) for k, v in counters.items()}
    caches = dict(compiled.engine._static_caches)
    assert list(caches) == [(2, COMPILE_BUCKET)]
    # another generation of the same batch size and cache length: no new graph, the same cache
    prompts = ["The cat", "Lily had a big red ball and she"]
    assert greedy(compiled, prompts, 30) == greedy(eager, prompts, 30)
    assert counters["stats"]["unique_graphs"] == 1
    assert compiled.engine._static_caches == caches


@pytest.fixture(scope="module")
def random_llama(tmp_path_factory):
    """A folder with only a config.json: a small Llama shape whose widths every int4 group size divides."""
    path = tmp_path_factory.mktemp("llama-config")
    (path / "config.json").write_text(json.dumps(dict(
        architectures=["LlamaForCausalLM"], hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=512, max_position_embeddings=512)))
    return path


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_compiled_quantized_bf16_step(random_llama, quantize):
    """bf16 quantized weights: the compiled step takes the dequantizing product (Inductor's CPU lowering
    of torch's packed products fails); its logits match the uncompiled step's to bf16's precision."""
    llm = LLM(random_llama, dtype="bfloat16", quantize=quantize, compile=True, random_weights=True)
    counters.clear()
    err = llm.engine.compiled_step_error([[5, 9, 200, 17, 3], [44, 101]], steps=4)
    assert err < 2e-2, f"relative difference {err:.2e}"
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1


def test_native_step_keeps_fp32_decode(stories):
    llm = LLM(str(stories), compile=True)
    assert llm.engine.native_plan() is not None
    greedy(llm, ["Once upon a time"], 4)
    assert llm.engine._compiled is None and not llm.engine._static_caches


def test_generate_command_with_compile(stories, capsys):
    from lmforge.cli import main

    args = ["generate", "-m", str(stories), "--dtype", "bfloat16", "--max-new-tokens", "12", "Once upon a time"]
    assert main(args) == 0
    eager = capsys.readouterr().out
    assert main(args + ["--compile"]) == 0
    assert capsys.readouterr().out == eager


def test_interleaved_compiled_generations_are_refused(stories):
    """The kept cache is one generation's at a time: a generation whose cache another one took stops
    with a clear error instead of reading the other's keys and values."""
    llm = LLM(str(stories), dtype="bfloat16", compile=True)
    gen = GenerationConfig(max_new_tokens=8)
    first = llm.engine.generate([llm.tokenizer.encode("Once upon a time")], gen)
    next(first), next(first)
    assert len(list(llm.engine.generate([llm.tokenizer.encode("The cat")], gen))) == 8
    with pytest.raises(LmforgeError, match="one at a time"):
        next(first)


def test_compiled_reference_products(random_llama):
    """Without the native kernels (LMFORGE_NO_NATIVE=1, as on a machine without a compiler, and as the
    CUDA path computes), bf16 int8 / int4 products are torch's: the compiled step takes the dequantizing
    product (see formats._compiling) and must match the uncompiled step, whose int4 runs torch's packed
    kernel."""
    code = (f"from lmforge import LLM\n"
            f"for q in ('int8', 'int4'):\n"
            f"    llm = LLM({str(random_llama)!r}, dtype='bfloat16', quantize=q, compile=True, random_weights=True)\n"
            f"    err = llm.engine.compiled_step_error([[5, 9, 200, 17, 3], [44, 101]], steps=3)\n"
            f"    assert err < 2e-2, (q, err)\n")
    env = {**os.environ, "LMFORGE_NO_NATIVE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
