"""Tokenizers rebuilt from a GGUF's embedded vocabulary, to tokenize exactly as llama.cpp does.

Two kinds (``tokenizer.ggml.model``):

- ``gpt2``: byte-level BPE with merges. ``tokenizer.ggml.pre`` names how llama.cpp splits text into
  words before the merges (a list of regexes, applied one after the other, each piece split again).
- ``llama``: SentencePiece BPE. The file has scores instead of merges; a merge of two pieces ranks by
  the score of the token it makes, as in llama.cpp's bigram search. Spaces are ``▁``, unknown
  characters fall back to ``<0xNN>`` byte tokens.

Control tokens (``<|im_end|>``) and user-defined tokens are matched whole in text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import LmforgeError

# llama.cpp token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CJK = "[一-龥ࠀ-一가-퟿]+"
# cased letters, as llama.cpp spells them; the escaped ones are range ends that Unicode normalisation
# would turn into other code points (and an empty range), so they are written as escapes
_DEEPSEEK_LETTERS = (
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-"
    "ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭ"
    "Ꚁ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+")

# llama.cpp's word-splitting regexes per pre-tokenizer kind, applied in order
_SPLITS = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"),
    "gpt-2": (_GPT2,),
    "starcoder": (r"\p{N}", _GPT2),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "deepseek-llm": ("[\r\n]", _DEEPSEEK_LETTERS, r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", _CJK, r"\p{N}+"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"),
}
# tokenizer.ggml.pre -> one of _SPLITS (llama.cpp groups several names under one regex set)
PRE_KINDS = {
    "default": "default",
    "gpt-2": "gpt-2", "phi-2": "gpt-2", "mpt": "gpt-2", "olmo": "gpt-2", "jais": "gpt-2", "roberta-bpe": "gpt-2",
    "starcoder": "starcoder", "refact": "starcoder", "command-r": "starcoder", "smollm": "starcoder",
    "codeshell": "starcoder", "exaone": "starcoder", "minerva-7b": "starcoder",
    "falcon": "falcon",
    "llama3": "llama3", "llama-v3": "llama3", "llama-bpe": "llama3", "falcon3": "llama3", "dbrx": "llama3",
    "smaug-bpe": "llama3",
    "qwen2": "qwen2", "qwen2.5": "qwen2", "stablelm2": "qwen2", "deepseek-r1-qwen": "qwen2", "megrez": "qwen2",
    "deepseek-llm": "deepseek-llm",
    "deepseek-coder": "deepseek-coder",
}
# kinds whose words are looked up whole before merging, and that add BOS unless the file says otherwise
_IGNORE_MERGES = {"llama3"}


def byte_level_bpe(meta: dict[str, Any], path: Path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = meta.get("tokenizer.ggml.pre", "default")
    kind = PRE_KINDS.get(pre)
    if kind is None:
        raise LmforgeError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported (supported: "
                           f"{', '.join(sorted(PRE_KINDS))}); token ids still work, text does not")
    if "tokenizer.ggml.merges" not in meta:
        raise LmforgeError(f"{path}: the byte-level BPE vocabulary has no tokenizer.ggml.merges")
    vocab = _vocab(meta["tokenizer.ggml.tokens"])
    merges = [_split_merge(m) for m in meta["tokenizer.ggml.merges"]]
    tk = Tokenizer(models.BPE(vocab, merges, ignore_merges=kind in _IGNORE_MERGES))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in _SPLITS[kind]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    return tk, kind in _IGNORE_MERGES


def sentencepiece_bpe(meta: dict[str, Any], path: Path):
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise LmforgeError(f"{path}: the SentencePiece vocabulary has no tokenizer.ggml.scores for every token")
    vocab = _vocab(tokens)
    unk = meta.get("tokenizer.ggml.unknown_token_id", 0)
    tk = Tokenizer(models.BPE(vocab, merges_from_scores(tokens, scores, vocab),
                              unk_token=tokens[unk] if 0 <= unk < len(tokens) else None,
                              fuse_unk=True, byte_fallback=True))
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    tk.normalizer = normalizers.Sequence(([normalizers.Prepend("▁")] if prefix else [])
                                         + [normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                   + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tk, True


def merges_from_scores(tokens: list[str], scores: list[float], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every (left, right) split of a token into two vocabulary pieces, best token score first."""
    found = []
    for token, score in zip(tokens, scores):
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in vocab and right in vocab:
                found.append((-score, vocab[token], left, right))
    found.sort(key=lambda m: m[:2])
    return [(left, right) for _, _, left, right in found]


BUILDERS = {"gpt2": byte_level_bpe, "llama": sentencepiece_bpe}


def tokenizer_from_metadata(meta: dict[str, Any], path: Path):
    """A lmforge Tokenizer from GGUF metadata that includes the vocabulary arrays."""
    from tokenizers import AddedToken

    from ..tokenizer import Tokenizer

    model = meta.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in meta:
        raise LmforgeError(f"{path}: the GGUF file has no embedded vocabulary (tokenizer.ggml.tokens); "
                           "token ids still work, text does not")
    builder = BUILDERS.get(model)
    if builder is None:
        raise LmforgeError(f"{path}: GGUF tokenizer model {model!r} is not supported (supported: gpt2 "
                           "byte-level BPE, llama SentencePiece); token ids still work, text does not")
    tk, default_add_bos = builder(meta, path)
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, k in zip(tokens, types) if k == CONTROL and t])
    tk.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, k in zip(tokens, types) if k == USER_DEFINED and t])

    def token(key: str) -> str | None:
        i = meta.get(key)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    eos_ids = [meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                 "tokenizer.ggml.eom_token_id") if meta.get(k) is not None]
    return Tokenizer(tk, bos_token=token("tokenizer.ggml.bos_token_id"), eos_token=token("tokenizer.ggml.eos_token_id"),
                     eos_ids=eos_ids, chat_template=meta.get("tokenizer.chat_template"),
                     add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", default_add_bos)))


def tokenizer_from_gguf(path: str | Path):
    """The tokenizer embedded in any GGUF file, vocabulary-only files included."""
    from .gguf import VOCAB_ARRAYS, open_reader, read_metadata

    path = Path(path)
    return tokenizer_from_metadata(read_metadata(open_reader(path), VOCAB_ARRAYS), path)


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a repeated token string keeps its first id
    return vocab


def _split_merge(merge: str) -> tuple[str, str]:
    cut = merge.find(" ", 1)  # as llama.cpp: a piece may itself start with a space
    return merge[:cut], merge[cut + 1:]
