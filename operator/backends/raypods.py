"""``runtime: ray`` on Kubernetes: per generation a Ray head pod and one Ray worker pod per replica.

The ranks run as Ray actors, driven the way the local backend drives them, from inside the
cluster. The head pod runs ``shardwright ray-head`` (``rayhead.py``): it starts the Ray
head, waits until every worker pod has joined, runs one ``RankActor`` per rank on the pod
the plan put it on, and exits with the generation's outcome. A worker pod is the torch pod
of its replica (name, labels, resources, node placement, checkpoint volume, gang
scheduling) with Ray's node process in place of the rank launcher: ``python -m
shardwright.workers.raynode`` joins the head offering a custom resource named after the
pod, one unit per rank, which pins each rank's actor there. Rank 0 serves ``/status`` on
its pod's telemetry port as with torch, so the operator's polling does not change.

The head pod takes the pod-level fields of rank 0's group's template (not its containers
or volumes), the restricted securityContext defaults and /dev/shm, as every pod does.

Reading the pods back (``podstatus.observe_pods``): the head decides, a worker pod's own failure
(OOMKilled, evicted, node lost) names the ranks it hosted.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from shardwright.operator.controller import StartGeneration
from shardwright.workers.config import CONFIG_ENV

from . import pods as render

#: Head pod env: the generation's worker pods as JSON (``encode_pods``).
RAY_PODS_ENV = "SHARDWRIGHT_RAY_PODS"
#: Port of the head's Ray GCS, where worker pods join.
GCS_PORT = 6379


@dataclasses.dataclass(frozen=True)
class RayPod:
    """A worker pod as the head's driver sees it: the Ray node offering the custom resource
    ``name`` (one unit per rank), hosting ranks ``first_rank`` .. ``first_rank + ranks - 1``,
    local rank i serving telemetry on ``telemetry_port + i``."""

    name: str
    first_rank: int
    ranks: int
    telemetry_port: int


def encode_pods(pods: list[RayPod]) -> str:
    return json.dumps([{"name": p.name, "firstRank": p.first_rank, "ranks": p.ranks, "telemetryPort": p.telemetry_port} for p in pods])


def decode_pods(text: str) -> list[RayPod]:
    return [RayPod(p["name"], int(p["firstRank"]), int(p["ranks"]), int(p["telemetryPort"])) for p in json.loads(text)]


def head_name(owner: render.Owner, generation: int) -> str:
    """``<job>-g<generation>-head``, fitted to a DNS label like the worker pods' names."""
    return render.child_name(owner, f"-g{generation}-head")


def render_pods(owner: render.Owner, action: StartGeneration, spec_groups: dict[str, Any], settings: render.PodSettings) -> list[dict[str, Any]]:
    """The head pod, then every worker pod of the generation, in rank order."""
    generation, world = action.generation, action.plan.world_size
    head = head_name(owner, generation)
    gcs = f"{head}.{render.service_name(owner)}.{owner.namespace}.svc:{GCS_PORT}"
    workers, members = [], []
    for (group, replica), placements in render.replicas(action.plan).items():
        name, first, count = render.pod_name(owner, generation, group, replica), placements[0].rank, len(placements)
        members.append(RayPod(name, first, count, settings.telemetry_port))
        env = {"RANK": str(first), "WORLD_SIZE": str(world), render.LOCAL_WORLD_SIZE_ENV: str(count)}
        command = ["python", "-m", "shardwright.workers.raynode", gcs, f"--resources={json.dumps({name: count})}"]
        labels = render.replica_labels(owner, generation, group, replica, first) | {render.LABEL_ROLE: render.ROLE_RAY_WORKER}
        workers.append(render.pod_manifest(
            owner, name, labels, render.rank_container(spec_groups[group], command, env, settings), settings,
            group_spec=spec_groups[group], pinned=render.node_affinity(placements), checkpoint=action.config.checkpoint,
        ))
    env = {
        "WORLD_SIZE": str(world), "MASTER_PORT": str(settings.master_port),
        RAY_PODS_ENV: encode_pods(members), CONFIG_ENV: action.config.model_dump_json(),
    }
    first_group = spec_groups[action.plan.ranks[0].group]
    container = {
        "name": "ray-head",
        # Rank 0's image: the driver and the ranks must run the same Shardwright and Ray.
        "image": render.group_image(first_group, settings),
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "shardwright.operator.cli", "ray-head"],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"name": "ray-gcs", "containerPort": GCS_PORT}],
        "resources": dict(settings.ray_head_resources),
        # Why the generation failed: the driver's termination message, else its last log lines.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    labels = render.job_labels(owner) | {render.LABEL_GENERATION: str(generation), render.LABEL_ROLE: render.ROLE_RAY_HEAD}
    # Rank 0's group's template without its containers and volumes: the head pulls the same
    # image (imagePullSecrets) onto the same kind of node (tolerations, priority).
    pod_level = {k: v for k, v in first_group.template.spec.items() if k not in ("containers", "initContainers", "volumes")}
    template = first_group.template.model_copy(update={"spec": pod_level})
    head_pod = render.pod_manifest(owner, head, labels, container, settings, template=template, checkpoint=action.config.checkpoint)
    return render.join_gang(owner, generation, [head_pod, *workers], settings)
