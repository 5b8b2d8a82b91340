"""Packed sequences: with ``segments`` every sequence-parallel kernel equals running each
document alone through plain SDPA, forward and all gradients, and skips empty blocks.

Two samples of N = 48 with different documents: a document of length 1, documents that
cross shard boundaries for every P, and trailing padding as a run of its own.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from shardwright.kernels import comm
from shardwright.kernels.attention import ring_attention, shard_sequence, tokenring_attention
from shardwright.kernels.attention.blocks import block_backward, block_forward
from shardwright.kernels.attention.documents import block_mask, kernel_mask
from tests.kernels.test_attention_kernels import (
    KERNELS,
    TOLERANCE,
    B,
    D,
    N,
    _heads,
    _inputs,
    _reference,
)

#: Document lengths per sample; the last run of each is padding (its own segment).
DOCUMENTS = ([1, 13, 20, 10, 4], [30, 1, 1, 11, 5])


def _segments() -> torch.Tensor:
    return torch.stack([torch.repeat_interleave(torch.arange(len(lengths)),
                                                torch.tensor(lengths)) for lengths in DOCUMENTS])


def _per_document_reference(q, k, v, dout, causal):
    """out, dq, dk, dv of every document run alone through SDPA, placed back in sequence."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    outs = torch.zeros_like(q)
    for b, lengths in enumerate(DOCUMENTS):
        start = 0
        for length in lengths:
            piece = (slice(b, b + 1), slice(None), slice(start, start + length))
            out = F.scaled_dot_product_attention(q[piece], k[piece], v[piece],
                                                 is_causal=causal, enable_gqa=True)
            out.backward(dout[piece])
            outs[piece] = out.detach()
            start += length
    return [outs, q.grad, k.grad, v.grad]


def _run(kernel, causal, seed, segments=True, dtype=torch.float32):
    """This rank's (out, dq, dk, dv) shards from the kernel, the reference's shards (fp32
    on the same, possibly rounded, inputs), and the bytes moved (forward, backward sent)."""
    fn, layout, kwargs = KERNELS[kernel]
    full = _inputs(seed, *_heads(kernel, comm.world_size()), N, dtype)
    expected = [shard_sequence(t, layout=layout)
                for t in _per_document_reference(*(t.float() for t in full), causal)]
    q, k, v, dout = (shard_sequence(t, layout=layout).detach().requires_grad_() for t in full)
    ids = shard_sequence(_segments(), layout=layout, dim=1) if segments else None
    with comm.traffic() as fwd:
        out = fn(q, k, v, causal=causal, segments=ids, **kwargs)
    with comm.traffic() as bwd:
        out.backward(dout)
    return [out.detach(), q.grad, k.grad, v.grad], expected, (fwd.sent, bwd.sent)


def _errors(kernel, causal, seed, dtype_name="float32"):
    """Max abs error of each of out, dq, dk, dv (bf16: in units of the largest magnitude
    of the reference tensor over all ranks, as in test_attention_kernels)."""
    got, expected, _ = _run(kernel, causal, seed, dtype=getattr(torch, dtype_name))
    finite = all(torch.isfinite(t).all() for t in got)
    units = [1.0 if dtype_name == "float32" else comm.all_gather(e).abs().max().item()
             for e in expected]
    return finite, [(g.float() - e).abs().max().item() / u
                    for g, e, u in zip(got, expected, units)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("size", [1, 2, 3, 4], ids=lambda p: f"P{p}")
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_each_document_attends_alone(dist_pool, kernel, size, causal):
    for rank, (finite, errors) in enumerate(dist_pool(size).run(_errors, kernel, causal, size)):
        assert finite and max(errors) <= 1e-5, (rank, dict(zip("o q k v".split(), errors)))


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_bf16_documents_within_attention_tolerance(dist_pool, kernel):
    """bf16 inputs, causal, P = 2: within 2^-6 of each tensor's largest magnitude of the
    fp32 per-document reference on the same rounded inputs (the bound of the kernels
    without documents)."""
    for rank, (finite, errors) in enumerate(
            dist_pool(2).run(_errors, kernel, True, 2, "bfloat16")):
        assert finite and max(errors) <= TOLERANCE["bfloat16"], (rank, errors)


def _non_empty(q_rows: range, kv_rows: range, causal: bool) -> bool:
    """Whether any sample has a query in ``q_rows`` and a key in ``kv_rows`` of one document
    (and, causal, the key not after the query): checked pair by pair."""
    ids = _segments()
    return any(ids[b, i] == ids[b, j] and (not causal or j <= i)
               for b in range(B) for i in q_rows for j in kv_rows)


def _traffic(kernel, causal):
    with_documents = _run(kernel, causal, 1)[2]
    without = _run(kernel, causal, 1, segments=False)[2]
    return with_documents, without


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_bytes_documents_add_one_gather_and_skip_empty_partials(dist_pool, kernel, causal):
    """Documents cost one all-gather of the ids (8 B n bytes to each of P-1 peers) in the
    forward; TokenRing sends no partial (forward: out and fp32 lse; backward: dq) for a
    block without an allowed pair (checked pair by pair here). P = 4, n = 12."""
    size, n = 4, N // 4
    hq = _heads(kernel, size)[0]
    ids_bytes = 8 * B * n * (size - 1)
    results = dist_pool(size).run(_traffic, kernel, causal)
    for rank, ((fwd, bwd), (fwd0, bwd0)) in enumerate(results):
        skipped = 0
        if kernel == "tokenring":  # rank helps the owners r != rank whose block is empty
            mine = range(rank * n, (rank + 1) * n)
            for owner in range(size):
                theirs = range(owner * n, (owner + 1) * n)
                visible = owner != rank and (not causal or owner > rank)
                skipped += visible and not _non_empty(theirs, mine, causal)
        rows = B * hq * n
        assert fwd == fwd0 + ids_bytes - skipped * rows * (D * 4 + 4), rank
        assert bwd == bwd0 - skipped * rows * D * 4, rank
    if kernel == "tokenring":
        assert any(fwd < fwd0 for (fwd, _), (fwd0, _) in results)  # something was skipped


def _segments_error(kernel, segments):
    fn, layout, kwargs = KERNELS[kernel]
    q = torch.zeros(B, 2 * comm.world_size(), N // comm.world_size(), D)
    try:
        fn(q, q, q, segments=segments(layout), **kwargs)
    except ValueError as error:
        return str(error)
    return None


def _wrong_dtype(layout):
    return shard_sequence(_segments(), layout=layout, dim=1).int()


def _wrong_shape(layout):
    return shard_sequence(_segments(), layout=layout, dim=1)[:, :-1]


def _decreasing(layout):
    return shard_sequence(_segments().flip(1), layout=layout, dim=1)


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize(
    "segments, message",
    [(_wrong_dtype, r"segments must be an int64 tensor \[batch, local_seq\] = \(2, 24\)"),
     (_wrong_shape, r"segments must be an int64 tensor \[batch, local_seq\] = \(2, 24\).*"
                    r"got torch.int64 \(2, 23\)"),
     (_decreasing, "segments must be non-decreasing along the full sequence")],
    ids=["dtype", "shape", "decreasing"],
)
def test_bad_segments_raise(dist_pool, kernel, segments, message):
    for error in dist_pool(2).run(_segments_error, kernel, segments):
        assert error is not None and re.search(message, error), error


def test_one_process_without_group():
    """No initialised process group: whole-sequence attention with the document mask."""
    full = _inputs(11, 4, 2, N, torch.float32)
    expected = _per_document_reference(*full, True)
    q, k, v = (t.detach().clone().requires_grad_() for t in full[:3])
    for fn in (ring_attention, tokenring_attention):
        for t in (q, k, v):
            t.grad = None
        out = fn(q, k, v, causal=True, segments=_segments())
        out.backward(full[3])
        got = [out.detach(), q.grad, k.grad, v.grad]
        assert max((g - e).abs().max().item() for g, e in zip(got, expected)) <= 1e-5



@pytest.mark.parametrize("kernel", list(KERNELS))
def test_one_document_per_sample_is_plain_attention(kernel):
    """All ids equal: every block allows every pair and runs the unmasked kernel; the
    result is full causal attention."""
    fn, _, kwargs = KERNELS[kernel]
    full = _inputs(12, 4, 2, N, torch.float32)
    q, k, v = (t.detach().clone().requires_grad_() for t in full[:3])
    out = fn(q, k, v, causal=True, segments=torch.zeros(B, N, dtype=torch.int64), **kwargs)
    out.backward(full[3])
    got = [out.detach(), q.grad, k.grad, v.grad]
    expected = _reference(*full, True)
    assert max((g - e).abs().max().item() for g, e in zip(got, expected)) <= 1e-5

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_masked_block_matches_each_document(dtype):
    """The CUDA path with a mask (memory-efficient kernel with an additive bias, also for
    bf16, where flash takes no mask) against per-document SDPA; includes rows whose block
    holds no key of their document (lse -inf, out 0)."""
    q, k, v, dout = (t.to("cuda", dtype) for t in _inputs(3, 4, 2, N, torch.float32))
    ids = _segments().cuda()
    scale = D**-0.5
    mask = kernel_mask(ids, ids, dtype)
    out, lse = block_forward(q, k, v, causal=True, scale=scale, mask=mask)
    grads = block_backward(dout, q, k, v, out, lse, causal=True, scale=scale, mask=mask)
    expected = _per_document_reference(*(t.float() for t in (q, k, v, dout)), True)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for got, want in zip([out, *grads], expected):
        torch.testing.assert_close(got.float(), want, atol=tol, rtol=0)
    _check_rows_without_keys(q, k, v, ids)


def _check_rows_without_keys(q, k, v, ids):
    """Queries 24..39 against keys 0..15: some rows of each sample have keys of their
    document there, the others none: those give out 0 and lse -inf (no NaN)."""
    q_ids, kv_ids = ids[:, 24:40], ids[:, :16]
    allowed = block_mask(q_ids, kv_ids)
    out, lse = block_forward(q[:, :, 24:40], k[:, :, :16], v[:, :, :16], causal=False,
                             scale=D**-0.5, mask=kernel_mask(q_ids, kv_ids, q.dtype))
    empty = ~allowed.any(-1).expand(lse.shape)
    assert empty.any() and (~empty).any()
    assert torch.isneginf(lse[empty]).all() and (out[empty] == 0).all()
    assert torch.isfinite(lse[~empty]).all() and torch.isfinite(out).all()


def test_rows_without_keys_in_a_block():
    q, k, v, _ = _inputs(3, 4, 2, N, torch.float32)
    _check_rows_without_keys(q, k, v, _segments())
