"""Fixtures of the operator tests: ``cluster`` on the local control plane (kubeapi.py) and,
for the few faults a real API server cannot be made to show, ``kmock_cluster`` (mockapi.py)."""

from .kubeapi import cluster  # noqa: F401  (fixture)
from .mockapi import kmock_cluster  # noqa: F401  (fixture)
