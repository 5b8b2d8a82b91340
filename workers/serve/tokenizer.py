"""A byte-level tokenizer for the built-in model: token ``b`` (0..255) is the byte ``b``.

The built-in model has no trained vocabulary, so text maps to its UTF-8 bytes; ids from 256
up are special (256 is end-of-sequence where the vocabulary has room for it) and decode to
nothing. A model with fewer than 256 tokens takes token-id prompts only.

Chat messages are laid out as ``<|role|>\\ncontent\\n`` per message, then ``<|assistant|>\\n``.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence

BYTES = 256


class ByteTokenizer:
    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        #: End-of-sequence id, stopping generations by default; None when the vocabulary has no room.
        self.eos_id: int | None = BYTES if vocab_size > BYTES else None

    @property
    def takes_text(self) -> bool:
        return self.vocab_size >= BYTES

    def encode(self, text: str) -> list[int]:
        if not self.takes_text:
            raise ValueError(
                f"this model's vocabulary has {self.vocab_size} tokens, fewer than the {BYTES} byte tokens "
                "text needs: send the prompt as a list of token ids"
            )
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Iterable[int]) -> str:
        return bytes(t for t in token_ids if t < BYTES).decode("utf-8", errors="replace")

    def decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder()

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        """``messages`` are ``{"role", "content"}`` with text content already joined."""
        turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return turns + "<|assistant|>\n"


class IncrementalDecoder:
    """Text of a growing token stream; a UTF-8 character split across tokens waits for its end."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_ids: Iterable[int], *, final: bool = False) -> str:
        return self._utf8.decode(bytes(t for t in token_ids if t < BYTES), final=final)


class TextStream:
    """The text of a growing output, cut before the first stop string.

    While a tail of the text could still grow into a stop string, it is held back, so no
    part of a stop string is ever sent.
    """

    def __init__(self, tokenizer: ByteTokenizer, stop: Sequence[str] = ()) -> None:
        self._decoder = tokenizer.decoder()
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._text = ""
        self._sent = 0
        #: A stop string was found: the request should end now.
        self.stopped = False

    @property
    def text(self) -> str:
        return self._text

    def feed(self, token_ids: Iterable[int], *, final: bool = False) -> str:
        """The text that may be sent now after ``token_ids``; ``final`` flushes the rest."""
        if self.stopped:
            return ""
        self._text += self._decoder.feed(token_ids, final=final)
        hits = [i for s in self._stop if (i := self._text.find(s)) >= 0]
        if hits:
            self._text, self.stopped, final = self._text[: min(hits)], True, True
        end = len(self._text) if final else max(self._sent, len(self._text) - self._hold)
        delta, self._sent = self._text[self._sent : end], end
        return delta
