"""Fixtures shared by every test group."""

from __future__ import annotations

import pytest

from tests.support.dist_pool import DistPool, close_pools, get_pool


@pytest.fixture(scope="session")
def dist_pool():
    """``dist_pool(P)`` gives a live pool of P gloo ranks, shared across the session."""
    yield get_pool
    close_pools()


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return  # don't pay torch's import for suites without GPU tests
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in gpu_items:
        item.add_marker(skip)


__all__ = ["DistPool"]
