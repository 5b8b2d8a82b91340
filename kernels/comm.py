"""The one thin wrapper every kernel sends data through.

All collectives and point-to-point transfers of the parallel kernels go through these
functions, so communication volume is a measured, tested property: wrap code in
``with traffic() as t:`` and read ``t.sent`` / ``t.received`` (bytes, this rank).

Counted volume is the algorithmic volume, what this rank must send and receive for the
operation to be possible, independent of how gloo or NCCL implement it:

- point-to-point: the tensor's bytes, on the sending and the receiving side;
- ``all_gather``: this rank's ``n`` bytes go to P-1 peers, ``n`` bytes come from each;
- ``all_to_all_single``: every slice except the one this rank keeps for itself;
- ``all_reduce``: a ring all-reduce, ``2 (P-1)/P n`` each way.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

__all__ = [
    "Traffic",
    "traffic",
    "rank",
    "world_size",
    "all_gather",
    "all_to_all_single",
    "all_reduce",
    "P2P",
    "exchange",
]


@dataclasses.dataclass
class Traffic:
    """Bytes this rank sent and received inside a ``traffic()`` block, in total and by op."""

    sent: int = 0
    received: int = 0
    calls: Counter = dataclasses.field(default_factory=Counter)

    def add(self, op: str, sent: int, received: int) -> None:
        self.sent += sent
        self.received += received
        self.calls[op] += 1


_active: list[Traffic] = []


@contextlib.contextmanager
def traffic() -> Iterator[Traffic]:
    """Count the bytes every wrapped operation moves while the block runs (nests)."""
    counter = Traffic()
    _active.append(counter)
    try:
        yield counter
    finally:
        _active.remove(counter)


def _record(op: str, sent: int, received: int) -> None:
    for counter in _active:
        counter.add(op, sent, received)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def rank(group: dist.ProcessGroup | None = None) -> int:
    """This process's rank in ``group``; 0 when torch.distributed is not initialised."""
    return dist.get_rank(group) if dist.is_initialized() else 0


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Size of ``group``; 1 when torch.distributed is not initialised."""
    return dist.get_world_size(group) if dist.is_initialized() else 1


def all_gather(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Gather ``tensor`` from every rank of ``group`` into a new ``[P, *tensor.shape]`` tensor."""
    size = world_size(group)
    out = tensor.new_empty((size, *tensor.shape))
    if size == 1:
        out[0].copy_(tensor)
        return out
    # gloo accepts only the concatenated form, so gather flat and view as stacked.
    dist.all_gather_single(out.view(-1), tensor.contiguous().view(-1), group=group)
    n = _nbytes(tensor)
    _record("all_gather", n * (size - 1), n * (size - 1))
    return out


def all_to_all_single(
    output: torch.Tensor,
    input: torch.Tensor,
    output_split_sizes: Sequence[int] | None = None,
    input_split_sizes: Sequence[int] | None = None,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """``dist.all_to_all_single`` along dim 0, counting every slice that leaves or arrives."""
    size = world_size(group)
    me = rank(group)
    if size == 1:
        output.copy_(input)
        return output
    dist.all_to_all_single(
        output, input.contiguous(), output_split_sizes, input_split_sizes, group=group
    )
    row_in = _nbytes(input) // max(input.shape[0], 1)
    row_out = _nbytes(output) // max(output.shape[0], 1)
    in_splits = input_split_sizes or [input.shape[0] // size] * size
    out_splits = output_split_sizes or [output.shape[0] // size] * size
    _record(
        "all_to_all",
        row_in * (sum(in_splits) - in_splits[me]),
        row_out * (sum(out_splits) - out_splits[me]),
    )
    return output


def all_reduce(
    tensor: torch.Tensor,
    op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """In-place all-reduce of ``tensor``; counted as a ring all-reduce."""
    size = world_size(group)
    if size == 1:
        return tensor
    dist.all_reduce(tensor, op=op, group=group)
    volume = 2 * (size - 1) * _nbytes(tensor) // size
    _record("all_reduce", volume, volume)
    return tensor


@dataclasses.dataclass(frozen=True)
class P2P:
    """One half of a point-to-point transfer: send ``tensor`` to, or receive it from, ``peer``.

    ``peer`` is a rank *within the group* passed to :func:`exchange`.
    """

    kind: str  # "send" | "recv"
    tensor: torch.Tensor
    peer: int


class _Pending:
    """Handles of posted transfers; ``wait()`` blocks until all have completed."""

    def __init__(self, works: list) -> None:
        self._works = works

    def wait(self) -> None:
        for work in self._works:
            work.wait()
        self._works = []


def exchange(ops: Sequence[P2P], group: dist.ProcessGroup | None = None) -> _Pending:
    """Post all ``ops`` at once (``batch_isend_irecv``) and return without waiting.

    Kernels post the next block's transfer, compute on the current block, then ``wait()``:
    this is how communication overlaps compute.
    """
    if not ops:
        return _Pending([])
    p2p_ops = []
    sent = received = 0
    for op in ops:
        fn = dist.isend if op.kind == "send" else dist.irecv
        p2p_ops.append(dist.P2POp(fn, op.tensor, group=group, group_peer=op.peer))
        if op.kind == "send":
            sent += _nbytes(op.tensor)
        else:
            received += _nbytes(op.tensor)
    works = dist.batch_isend_irecv(p2p_ops)
    _record("p2p", sent, received)
    return _Pending(works)
