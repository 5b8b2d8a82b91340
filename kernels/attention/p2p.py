"""Building point-to-point transfers for :func:`shardwright.kernels.comm.exchange`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import comm

__all__ = ["send_recv"]


def send_recv(
    send: Sequence[torch.Tensor], to: int, recv_like: Sequence[torch.Tensor], source: int
) -> tuple[list[comm.P2P], list[torch.Tensor]]:
    """Ops that send ``send`` to rank ``to`` and receive buffers shaped like ``recv_like``
    from rank ``source`` (ranks within the group); returns ``(ops, receive buffers)``.

    Callers concatenate the ops of one step and post them with a single ``comm.exchange``;
    every rank builds its ops in the same order, so sends and receives pair up.
    """
    buffers = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in recv_like]
    ops = [comm.P2P("send", t.contiguous(), to) for t in send]
    ops += [comm.P2P("recv", b, source) for b in buffers]
    return ops, buffers
