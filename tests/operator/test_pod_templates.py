"""A worker group's pod template on its pods: what it adds lands, what the operator owns
wins, the restricted Pod Security defaults hold unless the template opts out, and admission
names the field it refuses. Rendering is pure; the last test runs on the real control plane."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from shardwright.operator.api import validate
from shardwright.operator.api.podtemplate import PodTemplate
from shardwright.operator.backends import pods as render
from shardwright.operator.backends import raypods
from shardwright.operator.controller import JobRef, StartGeneration, worker_config
from shardwright.operator.planner import plan_uniform

from .kubeapi import create_job, passes, pods_of, posted_events, running_operator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny-train-template.yaml"
OWNER = render.Owner("tiny", "default", "u1")


def example(**group) -> dict:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["workers"][0].update(group)
    return doc


def rendered(doc: dict, settings: render.PodSettings = render.PodSettings(), *, template: dict | None = None,
             ray: bool = False, nodes: list[str | None] | None = None) -> list[dict]:
    """The pods of generation 1 of ``doc``; ``template`` replaces the group's after admission."""
    job, problems = validate(doc)
    assert not problems, problems
    groups = {g.name: g for g in job.spec.workers}
    if template is not None:
        groups = {n: g.model_copy(update={"template": PodTemplate.model_validate(template)}) for n, g in groups.items()}
    plan = plan_uniform(job.spec)
    if nodes:
        plan = dataclasses.replace(plan, ranks=tuple(dataclasses.replace(r, node=n) for r, n in zip(plan.ranks, nodes, strict=True)))
    action = StartGeneration(1, plan, worker_config(JobRef("tiny", "default", "/c"), job.spec, plan, 1, None))
    return (raypods if ray else render).render_pods(OWNER, action, groups, settings)


def env_of(container: dict) -> list[tuple[str, str]]:
    return [(e["name"], e.get("value")) for e in container["env"]]


def test_what_the_template_adds_lands_on_every_pod():
    for pod in rendered(example()):
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["labels"]["team"] == "research" and meta["labels"][render.LABEL_JOB] == "tiny"
        assert meta["annotations"] == {"example.com/cost-center": "ml-42"}
        assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        (sidecar,) = spec["initContainers"]
        assert sidecar["name"] == "log-shipper" and sidecar["restartPolicy"] == "Always"
        assert sidecar["securityContext"] == render.CONTAINER_SECURITY
        (ranks,) = spec["containers"]
        assert ranks["name"] == "ranks" and ranks["command"] == ["python", "-m", "shardwright.workers.launch"]
        assert env_of(ranks)[-1] == ("NCCL_DEBUG", "WARN") and ("RANK", pod["metadata"]["labels"][render.LABEL_RANK]) in env_of(ranks)
        assert [m["mountPath"] for m in ranks["volumeMounts"]] == ["/logs", "/dev/shm"]
        assert [v["name"] for v in spec["volumes"]] == ["logs", "shm"]


def test_the_operator_wins_on_what_it_owns():
    """Admission and the operator's own read of a job refuse all of this; the renderer
    handed it anyway still keeps the pod's name, restart policy, launcher, torch env and
    the operator's labels."""
    template = {
        "metadata": {"labels": {render.LABEL_JOB: "other", render.LABEL_GENERATION: "9"}},
        "spec": {"hostname": "x", "subdomain": "y", "restartPolicy": "Always", "terminationGracePeriodSeconds": 1,
                 "schedulerName": "mine",
                 "containers": [{"name": "ranks", "command": ["sh"], "args": ["-c", "true"],
                                 "env": [{"name": "RANK", "value": "7"}, {"name": "WORLD_SIZE", "value": "9"}, {"name": "MINE", "value": "1"}]}]},
    }
    pods = rendered(example(), render.PodSettings(gang_scheduler="volcano", termination_grace_seconds=30), template=template)
    for replica, pod in enumerate(pods):
        spec, (ranks,) = pod["spec"], pod["spec"]["containers"]
        assert (spec["hostname"], spec["subdomain"], spec["restartPolicy"]) == (f"tiny-g1-worker-{replica}", "tiny", "Never")
        assert spec["terminationGracePeriodSeconds"] == 30 and spec["schedulerName"] == "volcano"
        assert ranks["command"] == ["python", "-m", "shardwright.workers.launch"] and "args" not in ranks
        names = [n for n, _ in env_of(ranks)]
        assert names.count("RANK") == 1 and dict(env_of(ranks))["RANK"] == str(replica) and dict(env_of(ranks))["WORLD_SIZE"] == "2"
        assert "MINE" in names
        assert pod["metadata"]["labels"][render.LABEL_JOB] == "tiny" and pod["metadata"]["labels"][render.LABEL_GENERATION] == "1"
    # Without a gang scheduler the template's scheduler is the pod's.
    assert rendered(example(), template=template)[0]["spec"]["schedulerName"] == "mine"


def test_the_planned_node_is_anded_into_every_term_of_the_templates_affinity():
    zone = {"key": "zone", "operator": "In", "values": ["a"]}
    gpu = {"key": "gpu", "operator": "Exists"}
    preferred = [{"weight": 1, "preference": {"matchExpressions": [gpu]}}]
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [zone]}, {"matchExpressions": [gpu]}]},
                                 "preferredDuringSchedulingIgnoredDuringExecution": preferred}}
    doc = example(replicas=1, ranksPerReplica=2)
    doc["spec"]["workers"][0]["template"]["spec"]["affinity"] = affinity
    (pod,) = rendered(doc, nodes=["n1", "n1"])
    pin = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}
    node = pod["spec"]["affinity"]["nodeAffinity"]
    assert node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == [
        {"matchExpressions": [zone, pin]}, {"matchExpressions": [gpu, pin]}]
    assert node["preferredDuringSchedulingIgnoredDuringExecution"] == preferred
    avoided = render.avoid_nodes(pod, ["n9"])["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert all(term["matchExpressions"][-1]["values"] == ["n9"] for term in avoided["nodeSelectorTerms"])


def test_every_pod_is_restricted_with_shared_memory_and_no_token_by_default():
    doc = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    doc["spec"]["workers"][0]["resources"] = {"requests": {"cpu": 1, "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    for ray in (False, True):  # torch pods; a Ray head and its worker pods
        for pod in rendered(doc, ray=ray):
            spec = pod["spec"]
            assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                               "seccompProfile": {"type": "RuntimeDefault"}}
            assert spec["automountServiceAccountToken"] is False
            (main,) = spec["containers"]
            assert main["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
            limit = "4Gi" if main["name"] == "ranks" else "2Gi"  # the head's: PodSettings.ray_head_resources
            assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": limit}} in spec["volumes"]
            assert {"name": "shm", "mountPath": "/dev/shm"} in main["volumeMounts"]
    del doc["spec"]["workers"][0]["resources"]["limits"]
    assert rendered(doc)[0]["spec"]["volumes"] == [{"name": "shm", "emptyDir": {"medium": "Memory"}}]


def test_a_template_opts_out_field_by_field():
    doc = example()
    spec = doc["spec"]["workers"][0]["template"]["spec"]
    spec |= {"securityContext": {"runAsNonRoot": False, "runAsUser": 0}, "automountServiceAccountToken": True,
             "serviceAccountName": "trainer"}
    spec["containers"][0]["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]}}
    pod = rendered(doc, render.PodSettings(service_account="chart-default"))[0]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["automountServiceAccountToken"] is True and pod["serviceAccountName"] == "trainer"
    assert pod["containers"][0]["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"add": ["IPC_LOCK"]}}


def test_the_group_image_and_resources_may_come_from_the_template():
    doc = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    group = doc["spec"]["workers"][0]
    del group["resources"]
    group["template"] = {"spec": {"containers": [{"name": "ranks", "image": "mine:1", "resources": {"limits": {"memory": "1Gi"}}}],
                                  "imagePullSecrets": [{"name": "registry"}]}}
    head, worker, _ = rendered(doc, ray=True)
    assert worker["spec"]["containers"][0]["image"] == head["spec"]["containers"][0]["image"] == "mine:1"
    # The operator's GPU (one per rank) is added to the template's resources, not lost under them.
    assert worker["spec"]["containers"][0]["resources"] == {"limits": {"memory": "1Gi", "nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}
    # The head takes the template's pod-level fields, not its containers or volumes.
    assert head["spec"]["imagePullSecrets"] == [{"name": "registry"}] and head["spec"]["containers"][0]["name"] == "ray-head"
    labelled = example()
    head = rendered(labelled, ray=True)[0]
    assert head["metadata"]["labels"]["team"] == "research" and head["spec"]["tolerations"]
    assert "initContainers" not in head["spec"] and [v["name"] for v in head["spec"]["volumes"]] == ["shm"]


def refused(doc: dict) -> list[str]:
    _, problems = validate(doc)
    return [str(p) for p in problems]


T = "spec.workers[0].template"


@pytest.mark.parametrize("edit, expected", [
    (lambda t, g: t["metadata"]["labels"].update({"shardwright.io/job": "x"}), f"{T}.metadata.labels.shardwright.io/job: shardwright.io/* keys are the operator's"),
    (lambda t, g: t["spec"].update(hostname="h"), f"{T}.spec.hostname: set by the operator"),
    (lambda t, g: t["spec"].update(restartPolicy="Always"), f"{T}.spec.restartPolicy: set by the operator"),
    (lambda t, g: t["spec"]["initContainers"].append({"image": "x"}), f"{T}.spec.initContainers[1].name: required: a name"),
    (lambda t, g: t["spec"]["containers"].append({"name": "side", "image": "x"}), f"{T}.spec.containers[1].name: only the rank container ('ranks')"),
    (lambda t, g: t["spec"]["containers"].append({"name": "log-shipper"}), f"{T}.spec.containers[1].name: 'log-shipper' names an init container too"),
    (lambda t, g: t["spec"]["volumes"].append({"name": "shm", "emptyDir": {}}), f"{T}.spec.volumes[1].name: 'shm' is the operator's"),
    (lambda t, g: t["spec"]["volumes"].append({"name": "logs", "emptyDir": {}}), f"{T}.spec.volumes[1].name: duplicate name 'logs'"),
    (lambda t, g: t["spec"]["containers"][0].update(command=["sh"]), f"{T}.spec.containers[0].command: the operator runs"),
    (lambda t, g: t["spec"]["containers"][0]["env"].append({"name": "MASTER_ADDR", "value": "x"}), f"{T}.spec.containers[0].env[1].name: MASTER_ADDR is set by the operator"),
    (lambda t, g: t["spec"]["containers"][0]["volumeMounts"].append({"name": "logs", "mountPath": "/dev/shm"}),
     f"{T}.spec.containers[0].volumeMounts[1].mountPath: the operator mounts a memory-backed volume at /dev/shm"),
    (lambda t, g: t["spec"]["containers"][0].update(image="x") or g.update(image="y"), f"{T}.spec.containers[0].image: set in spec.workers[0].image too"),
    (lambda t, g: t["spec"]["containers"][0].update(resources={}), f"{T}.spec.containers[0].resources: set in spec.workers[0].resources too"),
    (lambda t, g: t["spec"].update(nodeSelector={"a": "b"}) or g.update(nodeSelector={"a": "c"}), f"{T}.spec.nodeSelector: set in spec.workers[0].nodeSelector too"),
    (lambda t, g: t["spec"].update(securityContext=[]), f"{T}.spec.securityContext: must be a mapping (got list)"),
    (lambda t, g: t["spec"].update(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": {}}}}),
     f"{T}.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms: must be a list of terms"),
    (lambda t, g: t["metadata"].update(ownerReferences=[]), f"{T}.metadata.ownerReferences: unknown field; allowed here: annotations, labels"),
], ids=["owned-label", "hostname", "restart-policy", "unnamed-init", "sidecar-in-containers", "name-twice", "owned-volume", "duplicate-volume",
        "command", "owned-env", "shm-mount", "image-twice", "resources-twice", "node-selector-twice", "security-not-mapping", "terms-not-list",
        "owner-references"])
def test_admission_names_the_template_field_it_refuses(edit, expected):
    doc = example()
    group = doc["spec"]["workers"][0]
    edit(group["template"], group)
    problems = refused(doc)
    assert any(p.startswith(expected) for p in problems), problems


def test_the_example_template_is_valid():
    assert refused(example()) == []


@pytest.mark.cluster
async def test_a_templates_toleration_label_and_sidecar_land_on_the_pods(cluster):
    """examples/tiny-train-template.yaml in a namespace enforcing the restricted Pod Security
    level: the API server accepts its pods, and they carry the template's additions."""
    cluster.api.merge(f"/api/v1/namespaces/{cluster.namespace}", {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"] = {"name": "tiny"}
    async with running_operator(cluster) as memo:
        await create_job(cluster, doc)
        await passes(memo, 3)  # the first creates the pods
        made = pods_of(cluster, 1)
        assert len(made) == 2, posted_events(cluster, "ReconcileFailed")
    for pod in made.values():
        assert pod["metadata"]["labels"]["team"] == "research"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
        assert [c["name"] for c in pod["spec"]["initContainers"]] == ["log-shipper"]
        assert pod["spec"]["initContainers"][0]["restartPolicy"] == "Always"
        assert ("NCCL_DEBUG", "WARN") in env_of(pod["spec"]["containers"][0])
