"""Tokenizers rebuilt from GGUF vocabularies against llama.cpp's test vectors (../shared/gguf-vocab).

``ggml-vocab-X.gguf.inp`` holds the inputs, each followed by a line ``__ggml_vocab_test__``;
``ggml-vocab-X.gguf.out`` holds one line of space-separated token ids per input (no BOS)."""
import functools
import json
from pathlib import Path

import pytest

from conftest import SHARED, need
from lmforge.errors import LmforgeError
from lmforge.io.gguf_vocab import CONTROL, NORMAL, USER_DEFINED, tokenizer_from_gguf, tokenizer_from_metadata

VOCAB = SHARED / "gguf-vocab"
SEPARATOR = "\n__ggml_vocab_test__\n"
CASES = sorted(p.name[len("ggml-vocab-"):-len(".gguf.inp")] for p in VOCAB.glob("*.gguf.inp"))
# vectors without a GGUF: the tokenizer.json of the same vocabulary, read into GGUF metadata
TOKENIZER_JSON = {"qwen2": ("qwen2.5", "qwen2")}
# vocabularies lmforge refuses with a clear error: WordPiece serves encoder models, which lmforge does not run
REFUSED = {"bert-bge": "tokenizer model 'bert' is not supported"}


def vectors(name: str) -> list[tuple[str, list[int]]]:
    inputs = (VOCAB / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split(SEPARATOR)
    assert inputs[-1] == "", "the input file ends with a separator"
    inputs = inputs[:-1]
    lines = (VOCAB / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(lines) >= len(inputs) and not any(lines[len(inputs):]), (len(lines), len(inputs))
    return [(text, [int(i) for i in line.split()]) for text, line in zip(inputs, lines)]


def metadata_from_tokenizer_json(folder: Path, pre: str) -> dict:
    """GGUF tokenizer metadata as llama.cpp's converter writes it for a byte-level BPE tokenizer.json."""
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = dict(tj["model"]["vocab"])
    added = {t["content"]: (t["id"], CONTROL if t["special"] else USER_DEFINED) for t in tj["added_tokens"]}
    tokens = [None] * (max(list(vocab.values()) + [i for i, _ in added.values()]) + 1)
    types = [NORMAL] * len(tokens)
    for token, i in vocab.items():
        tokens[i] = token
    for token, (i, kind) in added.items():
        tokens[i], types[i] = token, kind
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}


@functools.lru_cache(maxsize=None)  # each vocabulary is read once per session
def load(name: str):
    if name in TOKENIZER_JSON:
        folder, pre = TOKENIZER_JSON[name]
        folder = need(SHARED / "tokenizers" / folder)
        return tokenizer_from_metadata(metadata_from_tokenizer_json(folder, pre), folder)
    return tokenizer_from_gguf(VOCAB / f"ggml-vocab-{name}.gguf")


@pytest.mark.parametrize("name", CASES)
def test_llama_cpp_vectors(name):
    need(VOCAB)
    if name in REFUSED:
        with pytest.raises(LmforgeError, match=REFUSED[name]):
            load(name)
        return
    tok = load(name)
    cases = vectors(name)
    wrong = [(text, want, got) for text, want in cases
             if (got := tok.encode(text, add_special_tokens=False)) != want]
    assert not wrong, f"{name}: {len(wrong)}/{len(cases)} inputs differ, first: {wrong[0]!r}"


@pytest.mark.parametrize("name", [c for c in CASES if c not in REFUSED])
def test_decode_inverts_encode(name):
    need(VOCAB)
    tok = load(name)
    for text, _ in vectors(name):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_sentencepiece_adds_bos_and_keeps_control_tokens_whole():
    tok = tokenizer_from_gguf(need(VOCAB / "ggml-vocab-llama-spm.gguf"))
    assert tok.add_bos and tok.bos_id == 1 and tok.eos_ids == {2}
    assert tok.encode("Hello")[0] == 1
    assert tok.encode("</s>", add_special_tokens=False) == [2]


def test_smollm2_vocabulary(smollm2_path):
    tok = tokenizer_from_gguf(smollm2_path)
    assert not tok.add_bos and tok.eos_ids == {2}
    end = tok.token_to_id("<|im_end|>")
    assert end in tok.stop_ids
    ids = tok.encode_chat([{"role": "user", "content": "Hi"}])
    assert ids[0] == tok.token_to_id("<|im_start|>") and end in ids
    assert tok.decode(ids, skip_special_tokens=False).startswith("<|im_start|>system\n")
