"""Gang scheduling on the real control plane, for the three schedulers the operator speaks to.

Neither Volcano nor scheduler-plugins runs here, so their PodGroup CRDs (tests/support/crds,
with the upstream source named in each file) are installed into the real API server: the
operator creates its PodGroup there, and the rendered object passes the server's validation
against the scheduler's own schema with unknown fields refused (``fieldValidation=Strict``).
The pods carry what each scheduler documents: scheduler-plugins the ``scheduling.x-k8s.io/
pod-group`` label and its scheduler's name, Volcano the ``scheduling.k8s.io/group-name``
annotation, ``schedulerName: volcano`` and its queue on the PodGroup. Kueue's pod groups are
labels and annotations on the pods, created behind Kueue's scheduling gate: the real
scheduler holds them (``SchedulingGated``) until the gate is lifted, as Kueue lifts it once
it admits the whole group.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import yaml

from shardwright.operator.api import validate
from shardwright.operator.backends import gang, pods as render
from shardwright.operator.backends.pods import PodSettings
from shardwright.operator.controller import JobRef, StartGeneration, worker_config
from shardwright.operator.planner import plan_uniform

from .kubeapi import FAST, PODS, ApiError, Cluster, create_job, eventually, get, path, pods_of, running_operator, tiny_job

pytestmark = pytest.mark.cluster

CRDS = Path(__file__).resolve().parents[1] / "support" / "crds"
CRD_RESOURCE = "apiextensions.k8s.io/v1/customresourcedefinitions"
#: Each PodGroup-based scheduler: its CRD file and the resource the operator creates.
POD_GROUPS = {
    gang.SCHEDULER_PLUGINS: ("scheduling.x-k8s.io_podgroups.yaml", "scheduling.x-k8s.io/v1alpha1/podgroups"),
    gang.VOLCANO: ("scheduling.volcano.sh_podgroups.yaml", "scheduling.volcano.sh/v1beta1/podgroups"),
}
#: Three CPU pods: the gang is the generation's every pod.
GROUP = {"name": "worker", "replicas": 3, "device": "cpu", "resources": {"requests": {"cpu": 1}}}


def operator_config(**settings):
    """The tests' operator configuration with these ``PodSettings``."""
    return dataclasses.replace(FAST, kubernetes=dataclasses.replace(FAST.kubernetes, pods=PodSettings(**settings)))


async def install_crd(c: Cluster, file: str) -> None:
    """Install a vendored CRD (kept for the session: a CRD is cluster-wide and re-creating one
    being deleted fails) and wait until the API server serves it."""
    crd = yaml.safe_load((CRDS / file).read_text())
    try:
        await asyncio.to_thread(c.api.request, "POST", path(CRD_RESOURCE), crd)
    except ApiError as e:
        if e.status != 409:
            raise
    name = crd["metadata"]["name"]
    await eventually(lambda: any(cond["type"] == "Established" and cond["status"] == "True"
                                 for cond in (get_crd(c, name).get("status") or {}).get("conditions") or []), what=f"{name} established")


def get_crd(c: Cluster, name: str) -> dict:
    return c.api.get(path(CRD_RESOURCE, name=name)) or {}


def strictly_valid(c: Cluster, resource: str, body: dict) -> None:
    """The API server's verdict on ``body`` against the installed schema, unknown fields refused
    (a dry run: nothing is stored)."""
    c.api.request("POST", c.path(resource), body, params={"dryRun": "All", "fieldValidation": "Strict"})


@pytest.mark.parametrize("scheduler", [gang.SCHEDULER_PLUGINS, gang.VOLCANO])
async def test_the_podgroup_fits_the_schedulers_own_crd_and_every_pod_names_it(cluster, scheduler):
    file, resource = POD_GROUPS[scheduler]
    await install_crd(cluster, file)
    job = tiny_job(workers=[GROUP])
    job["metadata"]["labels"] = {gang.VOLCANO_QUEUE_LABEL: "research", gang.KUEUE_QUEUE_LABEL: "not-volcanos"}
    async with running_operator(cluster, operator_config(gang_scheduler=scheduler, gang_scheduler_name="gang-scheduler")):
        made = await create_job(cluster, job)
        group = await eventually(lambda: get(cluster, resource, "tiny-g1"), what=f"the {scheduler} PodGroup")
        pods = await eventually(lambda: len(p := pods_of(cluster, 1)) == 3 and p, what="the generation's 3 pods")
    assert group["spec"]["minMember"] == 3 == len(pods)
    assert group["metadata"]["ownerReferences"][0]["uid"] == made["metadata"]["uid"]
    for pod in pods.values():
        if scheduler == gang.VOLCANO:
            assert pod["spec"]["schedulerName"] == "volcano"
            assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "tiny-g1"
        else:
            assert pod["spec"]["schedulerName"] == "gang-scheduler"
            assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "tiny-g1"
        assert gang.KUEUE_QUEUE_LABEL not in pod["metadata"]["labels"]  # Kueue would admit each pod alone
        assert not pod["spec"].get("nodeName")  # the default scheduler leaves another scheduler's pods alone
    if scheduler == gang.VOLCANO:
        assert group["spec"]["queue"] == "research"  # the job's Volcano label, not its Kueue one
    # What the operator renders, judged by the scheduler's schema with unknown fields refused
    # (the operator's own create, like any client's by default, would drop them silently).
    # Generation 2's group: even a dry run of a second tiny-g1 is refused as existing.
    owner = render.Owner("tiny", cluster.namespace, made["metadata"]["uid"], labels=job["metadata"]["labels"])
    rendered = render.render_pod_group(owner, _start(2), PodSettings(gang_scheduler=scheduler), 3)
    strictly_valid(cluster, resource, rendered)
    with pytest.raises(ApiError) as refused:  # the check can fail: a field the schema lacks
        strictly_valid(cluster, resource, rendered | {"spec": {"minMembers": 3}})
    assert "unknown field" in str(refused.value) and "spec.minMembers" in str(refused.value)


async def test_volcano_queue_defaults_to_the_operators_setting_then_volcanos_own(cluster):
    _, resource = POD_GROUPS[gang.VOLCANO]
    await install_crd(cluster, POD_GROUPS[gang.VOLCANO][0])
    owner = render.Owner("tiny", cluster.namespace, "uid-1")
    configured = render.render_pod_group(owner, _start(1), PodSettings(gang_scheduler=gang.VOLCANO, gang_queue="batch"), 2)
    assert configured["spec"]["queue"] == "batch"
    unset = render.render_pod_group(owner, _start(2), PodSettings(gang_scheduler=gang.VOLCANO), 2)
    assert "queue" not in unset["spec"]
    stored = cluster.api.request("POST", cluster.path(resource), unset, params={"fieldValidation": "Strict"})
    assert stored["spec"]["queue"] == "default"  # Volcano's schema default: its lowest-weight queue


async def test_kueue_pods_form_one_gated_pod_group_the_scheduler_holds(cluster):
    job = tiny_job(workers=[GROUP])
    job["metadata"]["labels"] = {gang.KUEUE_QUEUE_LABEL: "team-a"}
    async with running_operator(cluster, operator_config(gang_scheduler=gang.KUEUE)):
        await create_job(cluster, job)
        pods = await eventually(lambda: len(p := pods_of(cluster, 1)) == 3 and p, what="the generation's 3 pods")
        for name in pods:
            await eventually(lambda name=name: _scheduled(cluster, name)["reason"] == "SchedulingGated", what=f"{name} held by the gate")
        for name, pod in pods.items():
            labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
            assert labels[gang.KUEUE_QUEUE_LABEL] == "team-a" and labels[gang.KUEUE_GROUP_LABEL] == "tiny-g1"
            assert annotations[gang.KUEUE_COUNT_ANNOTATION] == "3" and annotations[gang.KUEUE_RETRIABLE_ANNOTATION] == "false"
            assert pod["spec"]["schedulingGates"] == [{"name": gang.KUEUE_GATE}], name
            assert pod["spec"]["schedulerName"] == "default-scheduler"  # Kueue admits; the default scheduler places
        # Kueue admits the group by lifting the gate: then the scheduler takes the pod up.
        name = sorted(pods)[0]
        cluster.api.request("PATCH", cluster.path(PODS, name), [{"op": "remove", "path": "/spec/schedulingGates"}],
                            content_type="application/json-patch+json")
        await eventually(lambda: _scheduled(cluster, name).get("reason") != "SchedulingGated", what="the scheduler's own verdict once ungated")


def _scheduled(c: Cluster, name: str) -> dict:
    """The pod's PodScheduled condition (empty until the scheduler has looked at it)."""
    pod = get(c, PODS, name) or {}
    return next((cond for cond in (pod.get("status") or {}).get("conditions", []) if cond["type"] == "PodScheduled"), {})


def _start(generation: int) -> StartGeneration:
    """A StartGeneration of the example job (render_pod_group reads its generation only)."""
    job, _ = validate(tiny_job())
    plan = plan_uniform(job.spec)
    return StartGeneration(generation, plan, worker_config(JobRef("tiny", "default", "/c"), job.spec, plan, generation, None))
