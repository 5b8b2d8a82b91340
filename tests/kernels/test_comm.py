"""The byte-counting wrapper counts what it claims to count."""

import torch

from shardwright.kernels import comm


def _gather_and_count():
    me = comm.rank()
    x = torch.full((3, 5), float(me), dtype=torch.float32)
    with comm.traffic() as t:
        out = comm.all_gather(x)
    return out[:, 0, 0].tolist(), t.sent, t.received


def _ring_step():
    me, p = comm.rank(), comm.world_size()
    send = torch.full((4,), float(me))
    recv = torch.empty(4)
    with comm.traffic() as t:
        comm.exchange(
            [comm.P2P("send", send, (me + 1) % p), comm.P2P("recv", recv, (me - 1) % p)]
        ).wait()
    return recv[0].item(), t.sent, t.received


def test_all_gather_counts_peer_bytes(dist_pool):
    results = dist_pool(3).run(_gather_and_count)
    for values, sent, received in results:
        assert values == [0.0, 1.0, 2.0]
        assert sent == received == 2 * 15 * 4


def test_ring_exchange_moves_and_counts(dist_pool):
    results = dist_pool(3).run(_ring_step)
    assert [r[0] for r in results] == [2.0, 0.0, 1.0]
    assert all(r[1] == r[2] == 16 for r in results)
