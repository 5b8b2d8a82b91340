"""Document packing (workers/packing.py): every document's tokens once and in order, pieces of
long documents, segments/positions/targets per the shared interface, padding ignored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.packing import IGNORE, Documents, Packed, held_out

#: Token ``d * STRIDE + k`` is token k of document d: a row tells where each token came from.
STRIDE = 1000


def _docs(lengths: list[int]) -> Documents:
    lengths_a = np.asarray(lengths, dtype=np.int64)
    flat = np.concatenate([d * STRIDE + np.arange(n) for d, n in enumerate(lengths)])
    starts = np.concatenate([[0], np.cumsum(lengths_a)[:-1]])
    return Documents((flat,), np.zeros(len(lengths), dtype=np.int64), starts, lengths_a)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30), seq_len=st.integers(4, 17), seed=st.integers(0, 3))
def test_every_token_once_in_order_with_boundaries_kept(lengths, seq_len, seed):
    if sum(lengths) < seq_len + 1:
        return  # refused, tested below
    size = seq_len + 1
    packed = Packed(_docs(lengths), seq_len, seed, what="spec.data.path")
    seen: dict[int, list[tuple[int, int]]] = {d: [] for d in range(len(lengths))}  # doc -> (offset, length) pieces
    for j in range(packed.size):
        inputs, targets, positions, segments = (t.numpy() for t in packed[j])
        pieces = range(packed.first[j], packed.first[j + 1])
        assert np.all(np.diff(segments) >= 0) and segments[0] == 0
        fill = 0
        for s, p in enumerate(pieces):
            doc, offset, n = int(packed.doc[p]), int(packed.offset[p]), int(packed.length[p])
            seen[doc].append((offset, n))
            at = np.flatnonzero(segments == s)
            assert at.tolist() == list(range(fill, min(fill + n, seq_len)))  # the piece's run of inputs
            want = doc * STRIDE + offset + np.arange(n)
            assert inputs[at].tolist() == want[: len(at)].tolist()
            assert positions[at].tolist() == list(range(len(at)))
            inside = want[1:].tolist() + [IGNORE]  # each token predicts the next of its piece only
            assert targets[at].tolist() == inside[: len(at)]
            fill += n
        assert fill <= size
        if j + 1 < packed.size:  # next fit: the next sample's first piece did not fit here
            assert fill + packed.length[packed.first[j + 1]] > size
        pad = segments >= len(pieces)
        assert pad.tolist() == [t >= fill for t in range(seq_len)]
        assert np.all(targets[pad] == IGNORE) and len(set(segments[pad].tolist())) <= 1
    for d, n in enumerate(lengths):  # pieces tile each document in order, none longer than a sample,
        lone = n % size == 1  # but for a last piece of one token, which predicts nothing
        assert [o for o, _ in seen[d]] == list(range(0, n - lone, size))
        assert sum(k for _, k in seen[d]) == n - lone and all(k <= size for _, k in seen[d])


def test_a_long_document_becomes_pieces_of_one_sample_each():
    packed = Packed(_docs([23, 3, 21]), 9, 0, what="spec.data.path")  # samples of 10 tokens
    pieces = sorted((int(packed.doc[p]), int(packed.offset[p]), int(packed.length[p])) for p in range(len(packed.doc)))
    assert pieces == [(0, 0, 10), (0, 10, 10), (0, 20, 3), (1, 0, 3), (2, 0, 10), (2, 10, 10)]  # not (2, 20, 1)
    full = next(r for j in range(packed.size) if (r := packed[j]).segments.max() == 0 and r.targets[-1] != IGNORE)
    assert full.positions.tolist() == list(range(9))


def test_sample_i_is_a_pure_function_and_epochs_reorder_the_same_samples():
    docs = _docs([5, 9, 2, 14, 7, 3, 11])
    a, b = Packed(docs, 8, 4, what="x"), Packed(docs, 8, 4, what="x")
    for i in range(3 * a.size):
        assert all(torch.equal(x, y) for x, y in zip(a[i], b[i]))
    first = sorted(tuple(a[i].inputs.tolist()) for i in range(a.size))
    second = sorted(tuple(a[i].inputs.tolist()) for i in range(a.size, 2 * a.size))
    assert first == second
    assert Packed(docs, 8, 5, what="x").doc.tolist() != a.doc.tolist()  # another seed, another order


def test_fewer_tokens_than_one_sample_is_refused():
    with pytest.raises(ValueError, match=r"spec.data.path: 2 documents hold 7 tokens; seqLen 8 needs at least 9"):
        Packed(_docs([3, 4]), 8, 0, what="spec.data.path")
    with pytest.raises(ValueError, match=r"spec.data.path: no document holds more than one token"):
        Packed(_docs([1] * 12), 8, 0, what="spec.data.path")


def test_held_out_documents_follow_their_index_alone():
    mask = held_out(20000, 0.1)
    assert 0.09 < mask.mean() < 0.11
    assert held_out(500, 0.1).tolist() == mask[:500].tolist()  # more documents keep the earlier ones' split
    assert not held_out(100, 0.0).any()
