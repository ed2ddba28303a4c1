"""Tokenizers: `tokenizers` for tokenizer.json and GGUF vocabularies, plus chat templates."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from .config import ModelConfig
from .errors import LmforgeError

# End-of-turn markers of common chat formats: generation stops on them when the vocabulary has them.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


class Tokenizer:
    def __init__(self, tk, *, bos_token: str | None = None, eos_token: str | None = None,
                 eos_ids: Iterable[int] = (), chat_template: str | None = None, add_bos: bool | None = None):
        self.tk = tk
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id = tk.token_to_id(bos_token) if bos_token else None
        self.chat_template = chat_template
        self.add_bos = add_bos  # None: whatever the tokenizer's post-processor does
        ids = set(eos_ids)
        if eos_token and tk.token_to_id(eos_token) is not None:
            ids.add(tk.token_to_id(eos_token))
        self.eos_ids = frozenset(ids)
        # stop set for chat: eos plus the end-of-turn markers of the vocabulary
        turn = {tk.token_to_id(t) for t in END_OF_TURN if tk.token_to_id(t) is not None}
        self.stop_ids = frozenset(ids | turn)

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_hf_folder(cls, folder: Path, cfg: ModelConfig) -> "Tokenizer":
        from tokenizers import Tokenizer as TK

        path = folder / "tokenizer.json"
        if not path.exists():
            raise LmforgeError(f"{folder}: no tokenizer.json; lmforge needs the fast-tokenizer file "
                               "(save it with transformers' tokenizer.save_pretrained)")
        try:
            tk = TK.from_file(str(path))
        except Exception as e:
            raise LmforgeError(f"{path}: cannot read tokenizer ({e})") from None
        tc: dict[str, Any] = {}
        if (folder / "tokenizer_config.json").exists():
            from .io.hf import read_json
            tc = read_json(folder / "tokenizer_config.json")
        template = tc.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        for name in ("chat_template.jinja",):
            if template is None and (folder / name).exists():
                template = (folder / name).read_text(encoding="utf-8")
        return cls(tk, bos_token=_token_str(tc.get("bos_token")), eos_token=_token_str(tc.get("eos_token")),
                   eos_ids=cfg.eos_token_ids, chat_template=template)

    # ---------------------------------------------------------------------------------- encoding
    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    # ------------------------------------------------------------------------------------- chat
    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise LmforgeError("this model has no chat template; use `lmforge generate` for raw text")
        return _render(self.chat_template, messages=messages, add_generation_prompt=add_generation_prompt,
                       bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        # the template writes the special tokens itself (as transformers does)
        return self.encode(self.apply_chat_template(messages), add_special_tokens=False)


def _token_str(tok) -> str | None:
    if isinstance(tok, dict):  # AddedToken serialised as a dict
        return tok.get("content")
    return tok


def _render(template: str, **context) -> str:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise LmforgeError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(**context)
    except jinja2.TemplateError as e:
        raise LmforgeError(f"chat template failed to render: {e}") from None


class IncrementalDecoder:
    """Turns a stream of token ids into text pieces, holding back incomplete UTF-8 sequences.

    Decodes a short window (prefix_offset..) rather than the whole sequence each time, so a long
    generation costs O(window) per token, and spacing rules that depend on the previous token
    (SentencePiece's leading space) come out right."""

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tok.decode(self.ids[self.prefix:self.read])
        after = self.tok.decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""
