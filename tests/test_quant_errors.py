"""Bad quantization input: one clear line on stderr, exit code 2, nothing written."""
import pytest

from lmforge import LLM
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.quant import make_spec, parse_quantize

CASES = {
    "unknown method": (["--method", "squeeze"], "unknown quantization method 'squeeze'"),
    "fp8 with 4 bits": (["--method", "fp8", "--bits", "4"], "--bits 4 does not exist for it"),
    "smoothquant with 4 bits": (["--method", "smoothquant", "--bits", "4"], "--bits 4 does not exist for it"),
    "3 bits": (["--method", "rtn", "--bits", "3"], "--bits 3 is not supported"),
    "group size for int8": (["--method", "rtn", "--bits", "8", "--group-size", "64"], "applies to --bits 4 only"),
    "odd group size": (["--method", "rtn", "--bits", "4", "--group-size", "48"], "--group-size 48 is not supported"),
    "asym int8": (["--method", "rtn", "--bits", "8", "--scheme", "asym"], "8-bit weights are symmetric"),
    "alpha without smoothquant": (["--method", "rtn", "--alpha", "0.5"], "does not apply to --method rtn"),
    "alpha out of range": (["--method", "smoothquant", "--alpha", "1.5"], "--alpha must be between 0 and 1"),
    "group does not divide": (["--method", "rtn", "--bits", "4", "--group-size", "32"],
                              "--group-size 32 does not divide the input size 172 of layers.0.mlp.w_out"),
    "missing calibration file": (["--method", "gptq", "--calib-data", "/no/such/calib.txt"],
                                 "calibration file not found: /no/such/calib.txt"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_quantize_input_is_one_line(stories, tmp_path, capsys, case):
    flags, message = CASES[case]
    out = tmp_path / "out"
    assert main(["quantize", "--model", str(stories), *flags, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmforge: error: ") and err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_folder_is_refused_without_force(stories, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["quantize", "--model", str(stories), "--method", "rtn", "--output", str(out)]) == 2
    assert "already exists; choose another --output or pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_calibration_jsonl_column(stories, tmp_path, capsys):
    data = tmp_path / "calib.jsonl"
    data.write_text('{"content": "Once upon a time"}\n')
    assert main(["quantize", "--model", str(stories), "--method", "awq", "--calib-data", str(data),
                 "--output", str(tmp_path / "out")]) == 2
    assert "no 'text' field; name the text field with --calib-column" in capsys.readouterr().err


def test_jsonl_calibration_with_a_column(stories, tmp_path):
    data = tmp_path / "calib.jsonl"
    data.write_text('{"content": "Once upon a time there was a cat."}\n{"content": "The dog ran home."}\n')
    assert main(["quantize", "--model", str(stories), "--method", "gptq", "--group-size", "-1", "--calib-data",
                 str(data), "--calib-column", "content", "--output", str(tmp_path / "out")]) == 0


@pytest.mark.parametrize("spec,message", [("int3", "unknown --quantize 'int3'"),
                                          ("int8-g64", "group sizes and schemes apply to int4 only"),
                                          ("int4-g48", "unknown --quantize")])
def test_bad_on_the_fly_spec(spec, message):
    with pytest.raises(LmforgeError, match=message):
        parse_quantize(spec)


def test_on_the_fly_specs():
    assert parse_quantize("int4") == make_spec("rtn", bits=4, group_size=128)
    assert parse_quantize("int4-g64-asym") == make_spec("rtn", bits=4, group_size=64, scheme="asym")
    assert parse_quantize("INT8") == make_spec("rtn", bits=8)
    assert parse_quantize("fp8").format == "fp8"


def test_quantizing_a_quantized_folder_is_refused(stories, tmp_path):
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(stories), "--method", "rtn", "--output", str(out)]) == 0
    with pytest.raises(LmforgeError, match="already quantized"):
        LLM(out, quantize="int8")


def test_generate_with_bad_quantize_flag(stories, capsys):
    assert main(["generate", "--model", str(stories), "--quantize", "int4-g32", "hi"]) == 2
    assert "does not divide the input size 172" in capsys.readouterr().err
