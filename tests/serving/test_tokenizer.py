"""Byte-level text in and out: characters split across tokens, stop strings held back."""

from __future__ import annotations

import pytest

from shardwright.workers.serve.tokenizer import ByteTokenizer, TextStream


def test_text_round_trips_and_specials_decode_to_nothing():
    tok = ByteTokenizer(260)
    ids = tok.encode("héllo ✓")
    assert len(ids) == len("héllo ✓".encode()) and tok.decode([*ids, tok.eos_id]) == "héllo ✓"
    assert ByteTokenizer(256).eos_id is None


def test_a_small_vocabulary_takes_no_text():
    with pytest.raises(ValueError, match="vocabulary has 64 tokens, fewer than the 256 byte tokens"):
        ByteTokenizer(64).encode("hi")


def test_a_character_split_across_tokens_is_sent_whole():
    tok = ByteTokenizer(260)
    stream = TextStream(tok)
    e_acute = "é".encode()
    assert stream.feed([ord("a"), e_acute[0]]) == "a"
    assert stream.feed([e_acute[1]]) == "é"


def test_a_stop_string_is_never_sent_even_in_part():
    tok = ByteTokenizer(260)
    stream = TextStream(tok, stop=["END"])
    sent = [stream.feed(tok.encode(c)) for c in "abcEN"]
    assert "".join(sent) == "abc" and not stream.stopped  # "EN" may still become "END"
    assert stream.feed(tok.encode("D")) == "" and stream.stopped and stream.text == "abc"
    other = TextStream(tok, stop=["END"])
    assert "".join(other.feed(tok.encode(c)) for c in "ENx") + other.feed([], final=True) == "ENx"
