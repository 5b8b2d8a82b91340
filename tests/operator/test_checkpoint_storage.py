"""``spec.checkpoint`` storage: what the API admits (s3:// URIs, a credentials Secret, an
endpoint, a per-job claim) and what the rank pods get from it: the job's claim at the
checkpoint mount, the endpoint, the Secret's keys by reference, never a secret value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shardwright.operator.api import validate
from shardwright.operator.backends import pods as render
from shardwright.operator.backends import raypods
from shardwright.operator.controller import JobRef, StartGeneration, worker_config
from shardwright.operator.planner import plan_uniform
from shardwright.workers.config import CONFIG_ENV

ROOT = Path(__file__).resolve().parents[2]
S3 = {"uri": "s3://team-ckpt/runs/tiny", "credentialsSecret": "s3-keys", "endpoint": "http://10.240.0.1:9000"}


def job_with(checkpoint: dict):
    doc = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    doc["spec"]["checkpoint"] = checkpoint
    return validate(doc)


def pods_of(checkpoint: dict, settings: render.PodSettings, rendering=render.render_pods) -> list[dict]:
    job, problems = job_with(checkpoint)
    assert not problems, problems
    plan = plan_uniform(job.spec)
    config = worker_config(JobRef("tiny", "default", job.spec.checkpoint.uri or "/checkpoints/default/tiny"), job.spec, plan, 1, None)
    return rendering(render.Owner("tiny", "default", "u1"), StartGeneration(1, plan, config), {g.name: g for g in job.spec.workers}, settings)


@pytest.mark.parametrize("checkpoint, path, phrase", [
    ({"uri": "s3://AKIA:secret@team-ckpt/x"}, "spec.checkpoint.uri", "must not carry credentials"),
    ({"uri": "s3://Team_Ckpt/x"}, "spec.checkpoint.uri", "'Team_Ckpt' is not a valid bucket name"),
    ({"uri": "s3://ab/x"}, "spec.checkpoint.uri", "'ab' is not a valid bucket name"),
    ({"uri": "s3://10.0.0.1/x"}, "spec.checkpoint.uri", "not an IP address"),
    ({"uri": "s3://team-ckpt/x?versionId=3"}, "spec.checkpoint.uri", "without '?' or '#'"),
    ({"uri": "gs://team-ckpt/x"}, "spec.checkpoint.uri", "must be a path, a file:// URI or s3://bucket/prefix (got 'gs://team-ckpt/x')"),
    ({**S3, "endpoint": "http://key:secret@10.240.0.1:9000"}, "spec.checkpoint.endpoint", "without credentials or a path"),
    ({**S3, "endpoint": "10.240.0.1:9000"}, "spec.checkpoint.endpoint", "must be an http:// or https:// server address"),
    ({**S3, "credentialsSecret": "S3_Keys"}, "spec.checkpoint.credentialsSecret", "must be a DNS label"),
    ({"uri": "/mnt/ckpt", "credentialsSecret": "s3-keys"}, "spec.checkpoint.credentialsSecret", "only used with an s3:// uri"),
    ({"endpoint": "http://10.240.0.1:9000"}, "spec.checkpoint.endpoint", "only used with an s3:// uri"),
    ({**S3, "volumeClaim": "ckpt"}, "spec.checkpoint.volumeClaim", "only used with a path uri"),
], ids=["credentials-in-uri", "bucket-case", "bucket-short", "bucket-ip", "query", "scheme", "endpoint-credentials",
        "endpoint-no-scheme", "secret-name", "secret-without-s3", "endpoint-without-s3", "claim-with-s3"])
def test_bad_checkpoint_storage_is_refused_naming_the_field(checkpoint, path, phrase):
    _, problems = job_with(checkpoint)
    assert [p.path for p in problems] == [path], problems
    assert phrase in problems[0].message, problems[0].message


def test_s3_pods_get_the_endpoint_and_the_secrets_keys_by_reference_only():
    for pod in pods_of(S3, render.PodSettings(checkpoint_claim="shared")):
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["AWS_ENDPOINT_URL"] == {"name": "AWS_ENDPOINT_URL", "value": "http://10.240.0.1:9000"}
        assert container["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
        assert not any(k.startswith("AWS_") and k != "AWS_ENDPOINT_URL" for k in env)
        assert '"dir":"s3://team-ckpt/runs/tiny"' in env[CONFIG_ENV]["value"]


def test_the_ray_runtimes_pods_get_them_too():
    pods = pods_of({**S3}, render.PodSettings(), rendering=raypods.render_pods)
    assert [p["spec"]["containers"][0]["envFrom"] for p in pods] == [[{"secretRef": {"name": "s3-keys"}}]] * len(pods)


def test_a_jobs_volume_claim_replaces_the_operators_at_the_checkpoint_mount():
    mine, shared, none = (pods_of(ckpt, render.PodSettings(checkpoint_claim=claim))[0]["spec"]
                          for ckpt, claim in (({"volumeClaim": "tiny-ckpt"}, "shared"), ({}, "shared"), ({}, None)))
    shm = {"name": "shm", "emptyDir": {"medium": "Memory"}}  # every pod's /dev/shm (test_pod_templates.py)
    assert mine["volumes"] == [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": "tiny-ckpt"}}, shm]
    assert mine["containers"][0]["volumeMounts"] == [{"name": "checkpoints", "mountPath": "/checkpoints"}, {"name": "shm", "mountPath": "/dev/shm"}]
    assert shared["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shared"
    assert none["volumes"] == [shm] and "envFrom" not in none["containers"][0]
