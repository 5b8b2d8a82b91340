"""A job stored under a newer CRD, with fields this operator does not know, still runs: the
operator drops them, says so once, and reconciles the rest. The CRD is patched here to
carry ``spec.futureField`` and ``status.futureField`` (as a later version would), and put
back afterwards."""

from __future__ import annotations

import contextlib
import json
import logging

import pytest

from shardwright.operator.api import validate

from .kubeapi import TJ, create_job, eventually, get, job_status, passes, pods_of, running_operator, tiny_job

pytestmark = pytest.mark.cluster
CRD = "crd/trainingjobs.shardwright.io"
ROOT = "/spec/versions/0/schema/openAPIV3Schema/properties"
FUTURE = [f"{ROOT}/{part}/properties/futureField" for part in ("spec", "status")]


@contextlib.contextmanager
def newer_crd(cluster):
    """The TrainingJob CRD with a string ``futureField`` in spec and status, until the block ends."""
    cluster.cp.kubectl("patch", CRD, "--type=json", "-p", json.dumps([{"op": "add", "path": p, "value": {"type": "string"}} for p in FUTURE]))
    try:
        yield
    finally:
        cluster.cp.kubectl("patch", CRD, "--type=json", "-p", json.dumps([{"op": "remove", "path": p} for p in FUTURE]))


def kept(cluster, doc: dict) -> bool:
    """The server keeps ``spec.futureField`` (the patched schema is in effect)."""
    out = cluster.cp.kubectl("-n", cluster.namespace, "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(doc), check=False)
    return out.returncode == 0 and "futureField" in json.loads(out.stdout)["spec"]


async def test_a_job_with_fields_from_a_newer_crd_reconciles(cluster, caplog):
    job = tiny_job(futureField="from v1beta1")
    with newer_crd(cluster):
        await eventually(lambda: kept(cluster, job), what="the CRD with futureField")
        await create_job(cluster, job)
        cluster.api.merge(cluster.path(TJ, "tiny", "status"), {"status": {"futureField": "a newer operator's"}})
        stored = get(cluster, TJ, "tiny")
        assert stored["spec"]["futureField"] and stored["status"]["futureField"]
        assert any("spec.futureField: unknown field" in str(p) for p in validate(stored)[1])  # the webhook and CLI stay strict

        with caplog.at_level(logging.WARNING, logger="shardwright.operator.jobpass"):
            async with running_operator(cluster) as memo:
                await eventually(lambda: len(pods_of(cluster, 1)) == 2, what="generation 1's pods")
                await eventually(lambda: job_status(cluster).get("generation") == 1, what="status generation 1")
                await passes(memo, 3)
        told = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
        assert told == [f"{cluster.namespace}/tiny: ignoring fields this operator does not know (a newer CRD's): spec.futureField, status.futureField"]
        assert job_status(cluster)["futureField"] == "a newer operator's"  # the operator's status writes leave it alone
