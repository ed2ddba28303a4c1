"""Bad input gets one clear line on stderr and exit code 2, never a traceback."""
import json
import shutil

import pytest

from lmforge.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("lmforge: error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, err


def test_path_does_not_exist(capsys, tmp_path):
    code, err = run_cli(capsys, "generate", "--model", str(tmp_path / "nope"), "hi")
    assert_one_line_error(code, err, "no such file or folder")


def test_folder_without_config(capsys, tmp_path):
    code, err = run_cli(capsys, "generate", "--model", str(tmp_path), "hi")
    assert_one_line_error(code, err, "no config.json")


def test_unsupported_architecture_lists_supported(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    code, err = run_cli(capsys, "generate", "--model", str(tmp_path), "hi")
    assert_one_line_error(code, err, "BertModel", "LlamaForCausalLM", "GPT2LMHeadModel")


def test_truncated_safetensors(capsys, tmp_path, stories):
    folder = tmp_path / "model"
    shutil.copytree(stories, folder, ignore=shutil.ignore_patterns("llama2c"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = run_cli(capsys, "generate", "--model", str(folder), "hi")
    assert_one_line_error(code, err, "model.safetensors", "truncated")


def test_prompt_longer_than_context(capsys, stories):
    prompt = "once upon a time " * 400
    code, err = run_cli(capsys, "generate", "--model", str(stories), prompt)
    assert_one_line_error(code, err, "context window is 512 tokens", "the prompt is")


def test_unknown_alias(capsys):
    code, err = run_cli(capsys, "generate", "--model", "no-such-model-alias", "hi")
    assert_one_line_error(code, err, "unknown model", "smollm2-135m-instruct")


@pytest.mark.parametrize("flags,needle", [
    (["--greedy", "--temperature", "0.7"], "--greedy contradicts --temperature"),
    (["--greedy", "--top-k", "5"], "--greedy contradicts --top-k"),
    (["--num-beams", "3", "--temperature", "0.7"], "beam search is deterministic"),
    (["--num-beams", "3", "--stream"], "--no-stream"),
])
def test_contradictory_flags(capsys, stories, flags, needle):
    code, err = run_cli(capsys, "generate", "--model", str(stories), "hi", *flags)
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("flags,needle", [
    (["--max-new-tokens", "-3"], "max_new_tokens"),
    (["--top-p", "1.5"], "top_p"),
    (["--dtype", "int3"], "unknown dtype"),
])
def test_out_of_range_values(capsys, stories, flags, needle):
    code, err = run_cli(capsys, "generate", "--model", str(stories), "hi", *flags)
    assert_one_line_error(code, err, needle)


def test_cuda_without_gpu(capsys, stories):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, err = run_cli(capsys, "generate", "--model", str(stories), "hi", "--device", "cuda")
    assert_one_line_error(code, err, "no CUDA GPU")


def test_unsupported_rope_scaling(capsys, tmp_path, stories):
    import json
    folder = tmp_path / "model"
    shutil.copytree(stories, folder, ignore=shutil.ignore_patterns("llama2c"))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    code, err = run_cli(capsys, "generate", "--model", str(folder), "hi")
    assert_one_line_error(code, err, "yarn", "not supported")


def test_act_bits_outside_the_choices(capsys):
    """argparse rejects it before anything loads: usage, then one error line naming the choices."""
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--act-bits", "4", "hi"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "argument --act-bits: invalid choice: 4 (choose from 32, 16, 8)" in err
