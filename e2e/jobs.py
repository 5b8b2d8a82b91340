"""What the e2e scenarios share: the namespace the chart's jobs run in, and reading them."""

from __future__ import annotations

import functools

import yaml

from e2e.conftest import ROOT, Cluster
from tests.support.cluster import wait_for

SYSTEM = "shardwright-system"
NS = "e2e-train"
CLAIM = "checkpoints"
#: The operator's ServiceAccount: the chart's full name for release ``sw``.
OPERATOR_SA = "sw-shardwright"
#: The worker pods' ServiceAccount in NS (the chart's workerServiceAccount).
WORKER_SA = "trainers"
#: Polls through kubectl once a second: the pods training beside the test share its cores.
wait = functools.partial(wait_for, every=1.0)


def status(cluster: Cluster, name: str = "tiny-train") -> dict:
    return cluster.json("-n", NS, "get", "tj", name).get("status") or {}


def example(name: str, **training) -> str:
    """examples/tiny-train.yaml under another name, its training settings overridden."""
    doc = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["training"].update(training)
    return yaml.safe_dump(doc)
