"""Links between two GPUs: bandwidth and latency by where they sit.

Same node: the GPU's intra-node fabric (catalog ``link_gbps``). Different nodes: the slower
NIC of the two, scaled by how well the class sustains it (RDMA close to line rate, TCP
Ethernet well below), then by the fabric's oversubscription across racks and zones.
"""

from __future__ import annotations

import dataclasses

from .inventory import NicClass, Node


@dataclasses.dataclass(frozen=True)
class NetworkSettings:
    """Link assumptions; every field is a ratio or seconds, chosen from NCCL bus-bandwidth tests."""

    #: Fraction of NIC line rate NCCL reaches over RDMA (InfiniBand / RoCE).
    rdma_efficiency: float = 0.9
    #: Fraction of line rate reached over TCP sockets (kernel copies, no GPUDirect).
    ethernet_efficiency: float = 0.6
    #: Bandwidth factor between racks (leaf-switch oversubscription, 2:1 typical).
    cross_block_factor: float = 0.5
    #: Bandwidth factor between zones.
    cross_zone_factor: float = 0.25
    #: Per-message latency inside a node, seconds.
    intra_latency: float = 3e-6
    #: Per-message latency over RDMA, seconds.
    rdma_latency: float = 8e-6
    #: Per-message latency over TCP Ethernet, seconds.
    ethernet_latency: float = 40e-6


@dataclasses.dataclass(frozen=True)
class Link:
    #: Bytes per second one flow gets when it has the link to itself.
    bandwidth: float
    #: Seconds per message.
    latency: float
    #: True when the bytes leave the node (and so share its NIC with other flows).
    crosses_nodes: bool


def link(a: Node, b: Node, net: NetworkSettings) -> Link:
    """The link between a GPU on node ``a`` and one on node ``b``."""
    if a.name == b.name:
        return Link(a.gpu.link_gbps * 1e9, net.intra_latency, False)
    rdma = a.nic is NicClass.RDMA and b.nic is NicClass.RDMA
    efficiency, latency = (net.rdma_efficiency, net.rdma_latency) if rdma else (net.ethernet_efficiency, net.ethernet_latency)
    bandwidth = min(a.nic_gbps, b.nic_gbps) / 8 * 1e9 * efficiency
    if a.zone != b.zone:
        bandwidth *= net.cross_zone_factor
    elif a.block != b.block:
        bandwidth *= net.cross_block_factor
    return Link(bandwidth, latency, True)
