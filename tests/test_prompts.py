"""Prompt sources (txt, jsonl, csv, parquet), length buckets and padding waste, batched generation
written as JSON lines, and one-line errors for bad datasets."""
import json

import pytest

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.prompts import padding_report, padding_waste, plan_batches, read_dataset, read_prompt_file

PROMPTS = ["Once upon a time", "Lily had a red ball and", "The sun", "Tom and his dog went to the big park to"]


def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first\n\nsecond line\\nwith a break\n")
    assert read_prompt_file(txt) == ["first", "second line\nwith a break"]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "a"}\n{"text": "b", "id": 2}\n')
    assert read_prompt_file(jl) == ["a", "b"]
    jl.write_text('{"question": "a"}\n')
    with pytest.raises(LmforgeError, match='no "prompt" or "text"'):
        read_prompt_file(jl)


def test_datasets(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"q": p, "n": i}) + "\n" for i, p in enumerate(PROMPTS)))
    (tmp_path / "d.csv").write_text("n,q\n" + "".join(f'{i},"{p}"\n' for i, p in enumerate(PROMPTS)))
    for name in ("d.jsonl", "d.csv"):
        assert read_dataset(tmp_path / name, "q") == PROMPTS


def test_parquet(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"q": PROMPTS, "n": list(range(4))}), tmp_path / "d.parquet")
    assert read_dataset(tmp_path / "d.parquet", "q") == PROMPTS
    with pytest.raises(LmforgeError, match="no column 'text'"):
        read_dataset(tmp_path / "d.parquet", "text")
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)  # as if not installed
    with pytest.raises(LmforgeError, match="needs pyarrow"):
        read_dataset(tmp_path / "d.parquet", "q")


@pytest.mark.parametrize("content, name, column, message", [
    ('{"q": "a"}\n', "d.jsonl", "text", r"no column 'text' \(columns: q\)"),
    ("q\na\n", "d.csv", "text", "no column 'text'"),
    ("", "d.jsonl", "q", "the dataset is empty"),
    ("q\n", "d.csv", "q", "the dataset is empty"),
    (b"\xff\xfe\x00garbage", "d.jsonl", "q", "cannot read it as UTF-8"),
    ('{"q": "a"\n', "d.jsonl", "q", "line 1: not valid JSON"),
    (b"PAR1 not really", "d.parquet", "q", "not a readable parquet file"),
    ('{"q": null}\n', "d.jsonl", "q", "row 1 has no text"),
    ("a", "d.xlsx", "q", "unknown dataset format .xlsx"),
])
def test_bad_datasets(tmp_path, content, name, column, message):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(LmforgeError, match=message):
        read_dataset(path, column)


def test_missing_file(tmp_path):
    with pytest.raises(LmforgeError, match="no such file"):
        read_dataset(tmp_path / "nope.csv", "q")


def test_plan_batches_and_padding_waste():
    lengths = [3, 17, 4, 16, 5, 15]
    plain = plan_batches(lengths, 2)
    assert [b.indices for b in plain] == [(0, 1), (2, 3), (4, 5)]
    assert [b.padded_len for b in plain] == [17, 16, 15]
    bucketed = plan_batches(lengths, 2, bucket_size=8)
    assert [b.indices for b in bucketed] == [(0, 2), (4, 5), (3, 1)]
    assert [b.padded_len for b in bucketed] == [8, 16, 24]
    assert padding_waste(lengths, plain) == pytest.approx(1 - 60 / 96)
    assert padding_waste(lengths, bucketed) == pytest.approx(1 - 60 / 96)
    assert padding_waste(lengths, plan_batches(lengths, 2, bucket_size=1)) == pytest.approx(1 - 60 / 72)
    report = padding_report(lengths, 2, 4)
    assert report["bucketed_padding_waste"] < report["padding_waste"]
    assert report["bucketed_distinct_lengths"] <= report["distinct_lengths"]
    with pytest.raises(LmforgeError, match="--bucket-size must be at least 1"):
        plan_batches(lengths, 2, bucket_size=0)


def test_generate_batched_to_jsonl(stories, tmp_path, capsys):
    src = tmp_path / "prompts.txt"
    src.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out.jsonl"
    common = ["generate", "--model", str(stories), "--max-new-tokens", "6", "--prompt-file", str(src)]
    assert main(common + ["--batch-size", "3", "--bucket-size", "4", "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == PROMPTS
    assert all(r["completion_tokens"] == 6 and r["padded_prompt_tokens"] % 4 == 0 for r in records)
    assert {"prompt_tokens", "batch_latency_s", "batch_tokens_per_s"} <= set(records[0])
    assert "4/4 prompts" in capsys.readouterr().err
    # batched + bucketed completions equal those of one prompt at a time
    assert main(common + ["--output", str(tmp_path / "single.jsonl")]) == 0
    single = [json.loads(line) for line in (tmp_path / "single.jsonl").read_text().splitlines()]
    assert [r["completion"] for r in single] == [r["completion"] for r in records]


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "{d}", "--column", "nope"], "no column 'nope'"),
    (["--dataset", "{empty}"], "the dataset is empty"),
    (["--dataset", "{missing}"], "no such file"),
    (["--prompt-file", "{d}", "--dataset", "{d}"], "give one prompt source"),
    (["--dataset", "{d}", "--column", "q", "--draft", "ngram", "--batch-size", "2"], "one prompt at a time"),
])
def test_cli_errors_are_one_line(stories, tmp_path, capsys, extra, message):
    d = tmp_path / "d.jsonl"
    d.write_text('{"q": "Once upon a time"}\n')
    (tmp_path / "e.jsonl").write_text("")
    args = [a.format(d=d, empty=tmp_path / "e.jsonl", missing=tmp_path / "missing.csv") for a in extra]
    assert main(["generate", "--model", str(stories), "--max-new-tokens", "2"] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
