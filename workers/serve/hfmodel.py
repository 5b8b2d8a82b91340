"""A Hugging Face directory's tokenizer for the built-in engine's HTTP layer (replica and router).

A ServingPool whose ``model.from`` names a Hugging Face directory (a TrainingJob's export,
say) serves its weights (``weights.build_model`` through ``hf/weights.py``) and reads and
writes text with its ``tokenizer.json`` (the ``tokenizers`` library, what transformers'
fast tokenizers run). :class:`HFTokenizer` has :class:`ByteTokenizer`'s interface, so the
OpenAI protocol, stop strings and streaming are the same for both. Prompts are encoded as
transformers encodes them by default (the tokenizer's own special tokens added, e.g. a
Llama BOS); output decodes without special tokens. Imports no torch: the router runs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..hf import config as hf_config
from ..hf import fetch
from ..storage import is_url
from .tokenizer import ByteTokenizer

TOKENIZER = "tokenizer.json"
#: Where the end-of-sequence id is read, first found wins: generation defaults, then the model's.
EOS_FILES = ("generation_config.json", hf_config.CONFIG)


def tokenizer_for(vocab_size: int, source: str | None) -> ByteTokenizer | HFTokenizer:
    """The tokenizer of a served model: ``source``'s (a Hugging Face directory, path or URI,
    fetched if need be) when it has a ``tokenizer.json``, else bytes over ``vocab_size``."""
    if source is None:
        return ByteTokenizer(vocab_size)
    local = fetch.fetch(source) if is_url(source) else Path(source)
    vocab = hf_config.read_config(local).vocab_size  # a URI's is known only once fetched
    return HFTokenizer(local, vocab) if (local / TOKENIZER).is_file() else ByteTokenizer(vocab)


class HFTokenizer:
    """``tokenizer.json`` of a Hugging Face directory, with ``ByteTokenizer``'s interface."""

    takes_text = True

    def __init__(self, path: str | Path, vocab_size: int) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(Path(path) / TOKENIZER))
        self.vocab_size = vocab_size
        #: End-of-sequence id, stopping generations by default (as transformers' ``generate``).
        self.eos_id: int | None = _eos_id(Path(path))

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    def decode(self, token_ids: Iterable[int]) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self)

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        """The built-in layout (``ByteTokenizer``'s); the directory's Jinja template is not run."""
        return ByteTokenizer.apply_chat_template(self, messages)  # type: ignore[arg-type]


class IncrementalDecoder:
    """Text of a growing token stream: the whole stream decoded again, the new end sent. A
    character whose bytes are split across tokens (decoded as U+FFFD) waits for its end."""

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._sent = 0

    def feed(self, token_ids: Iterable[int], *, final: bool = False) -> str:
        self._ids.extend(token_ids)
        text = self._tokenizer.decode(self._ids)
        if not final:
            text = text.rstrip("\ufffd")
        delta = text[self._sent:]
        self._sent = max(self._sent, len(text))
        return delta


def _eos_id(path: Path) -> int | None:
    for name in EOS_FILES:
        file = path / name
        eos = json.loads(file.read_text()).get("eos_token_id") if file.is_file() else None
        if isinstance(eos, list):  # Llama 3 lists several; the first is the tokenizer's own
            eos = eos[0] if eos else None
        if isinstance(eos, int):
            return eos
    return None
