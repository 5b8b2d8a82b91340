"""``spec.readmit`` applied to the status: avoided nodes taken back, the request acknowledged.

A job keeps off the nodes where it replaced a straggler (``status.avoidedNodes``). A user
takes nodes back with ``spec.readmit: {nodes: [...], token: ...}``. The operator never edits
the spec (a GitOps tool would put a removed field back on every sync); it records the
request it applied in ``status.readmitted`` and applies a request only while the two
differ. So a request that stays in git does nothing more after the first pass, and a node
avoided again later stays avoided until the user changes the request (its ``token``).
"""

from __future__ import annotations

from shardwright.operator.api import EventType, Reason, TrainingJobSpec, TrainingJobStatus
from shardwright.operator.api.readmit import Readmit

from .actions import Event


def readmit(spec: TrainingJobSpec, status: TrainingJobStatus) -> tuple[TrainingJobStatus, list[Event]]:
    """``status`` with ``spec.readmit`` applied, and the events that say what it did. The
    same ``status`` and no event when the request was applied already; removing the
    request removes its acknowledgment (the nodes stay readmitted)."""
    request, applied = spec.readmit, status.readmitted
    if request is None:
        return (status, []) if applied is None else (status.model_copy(update={"readmitted": None}), [])
    request = Readmit(nodes=list(dict.fromkeys(request.nodes)), token=request.token)
    if applied == request:
        return status, []
    avoided = status.avoided_nodes
    taken = status.model_copy(update={"avoided_nodes": [n for n in avoided if n not in request.nodes], "readmitted": request})
    return taken, events(request.nodes, avoided)


def events(requested: list[str], avoided: list[str]) -> list[Event]:
    """What a readmit request did, against the nodes the job avoided before it."""
    back = [n for n in requested if n in avoided]
    unknown = [n for n in requested if n not in avoided]
    told = []
    if back:
        told.append(Event(EventType.NORMAL, Reason.NODE_READMITTED, f"Later generations may run on {', '.join(back)} again (spec.readmit)"))
    if unknown:
        told.append(Event(EventType.WARNING, Reason.READMIT_IGNORED, f"Not avoided by this job, nothing to readmit: {', '.join(unknown)} "
                          f"(status.avoidedNodes: {', '.join(avoided) or 'none'})"))
    return told
