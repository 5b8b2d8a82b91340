"""Gang scheduling: what each gang scheduler needs to place a generation's pods all or none.

One :class:`Gang` per generation (its name is the generation's, its members every pod of
it, a Ray head included). What each scheduler reads, from its own documentation and API:

- **scheduler-plugins** (coscheduling): a PodGroup ``scheduling.x-k8s.io/v1alpha1`` with
  ``minMember``; each pod carries the label ``scheduling.x-k8s.io/pod-group`` and
  ``schedulerName`` of the second scheduler that runs the plugin (its chart's
  ``scheduler-plugins-scheduler`` by default).
- **Volcano**: a PodGroup ``scheduling.volcano.sh/v1beta1`` with ``minMember`` and its
  ``queue``; each pod carries the annotation ``scheduling.k8s.io/group-name`` and
  ``schedulerName: volcano``.
- **Kueue** (its plain-pod integration, "pod groups"; no PodGroup object): each pod carries
  the labels ``kueue.x-k8s.io/queue-name`` and ``kueue.x-k8s.io/pod-group-name``, the
  annotation ``kueue.x-k8s.io/pod-group-total-count``, and is created held by the scheduling
  gate ``kueue.x-k8s.io/admission``, which Kueue lifts once it admits the whole group. A
  generation never replaces a pod in place (a new generation is a new group), so every pod
  says ``kueue.x-k8s.io/retriable-in-group: "false"``: a failed pod finishes the workload
  and frees its quota. Without a queue (the job's label or the operator's setting) no gate is
  added: Kueue's webhook gates the pods it manages, and pods it ignores are not held forever.

The queue of a job: its own label (``kueue.x-k8s.io/queue-name`` for Kueue,
``scheduling.volcano.sh/queue-name`` for Volcano), else the operator's ``gang_queue``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

VOLCANO = "volcano"
SCHEDULER_PLUGINS = "scheduler-plugins"
KUEUE = "kueue"
#: The values of the operator's ``--gang-scheduler``.
SCHEDULERS = (VOLCANO, SCHEDULER_PLUGINS, KUEUE)
#: scheduler-plugins' second scheduler as its chart names it (``scheduler.name``).
SCHEDULER_PLUGINS_NAME = "scheduler-plugins-scheduler"

PLUGINS_LABEL = "scheduling.x-k8s.io/pod-group"
VOLCANO_ANNOTATION = "scheduling.k8s.io/group-name"
#: A TrainingJob label naming its Volcano queue.
VOLCANO_QUEUE_LABEL = "scheduling.volcano.sh/queue-name"
#: Kueue reads this label on the pods; a TrainingJob label of the same name names its LocalQueue.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_RETRIABLE_ANNOTATION = "kueue.x-k8s.io/retriable-in-group"
KUEUE_GATE = "kueue.x-k8s.io/admission"
#: Where each scheduler's queue is named on a TrainingJob.
QUEUE_LABELS = {VOLCANO: VOLCANO_QUEUE_LABEL, KUEUE: KUEUE_QUEUE_LABEL}


@dataclasses.dataclass(frozen=True)
class Gang:
    """One generation's pods as its gang scheduler sees them."""

    #: One of :data:`SCHEDULERS`.
    scheduler: str
    #: The PodGroup's name (Kueue: the pod group's, which names its Workload).
    name: str
    #: Pods of the generation: all must be placed before any runs.
    members: int
    #: Volcano's queue or Kueue's LocalQueue; None: the scheduler's default.
    queue: str | None = None
    #: The ``schedulerName`` of scheduler-plugins' scheduler.
    scheduler_name: str = SCHEDULER_PLUGINS_NAME


def queue_of(scheduler: str, job_labels: Mapping[str, str], default: str | None) -> str | None:
    """The queue a job's pods wait in: the job's own label for ``scheduler``, else ``default``."""
    label = QUEUE_LABELS.get(scheduler)
    return (job_labels.get(label) if label else None) or default


def pod_group(gang: Gang, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The PodGroup object of ``gang`` (``metadata`` is its name, namespace, labels and
    owner); None for Kueue, whose pod groups are labels on the pods."""
    if gang.scheduler == VOLCANO:
        spec: dict[str, Any] = {"minMember": gang.members} | ({"queue": gang.queue} if gang.queue else {})
        return {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "PodGroup", "metadata": metadata, "spec": spec}
    if gang.scheduler == SCHEDULER_PLUGINS:
        return {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": metadata,
                "spec": {"minMember": gang.members}}
    return None


def join(pod: dict[str, Any], gang: Gang) -> dict[str, Any]:
    """``pod`` as a member of ``gang``: the scheduler's labels, annotations, scheduler name and
    gate set over what the pod's template put there (the operator's win)."""
    meta, spec = pod["metadata"], pod["spec"]
    labels, annotations = dict(meta.get("labels") or {}), dict(meta.get("annotations") or {})
    if gang.scheduler == VOLCANO:
        spec = spec | {"schedulerName": VOLCANO}
        annotations[VOLCANO_ANNOTATION] = gang.name
    elif gang.scheduler == SCHEDULER_PLUGINS:
        spec = spec | {"schedulerName": gang.scheduler_name}
        labels[PLUGINS_LABEL] = gang.name
    elif gang.scheduler == KUEUE:
        labels[KUEUE_GROUP_LABEL] = gang.name
        annotations |= {KUEUE_COUNT_ANNOTATION: str(gang.members), KUEUE_RETRIABLE_ANNOTATION: "false"}
        if gang.queue:
            labels[KUEUE_QUEUE_LABEL] = gang.queue
            gates = [g for g in spec.get("schedulingGates") or [] if g.get("name") != KUEUE_GATE]
            spec = spec | {"schedulingGates": [*gates, {"name": KUEUE_GATE}]}
    meta = meta | {"labels": labels} | ({"annotations": annotations} if annotations else {})
    return pod | {"metadata": meta, "spec": spec}


__all__ = ["Gang", "SCHEDULERS", "SCHEDULER_PLUGINS_NAME", "queue_of", "pod_group", "join"]
