"""``spec.readmit``: nodes a job avoids that its later generations may use again, and the same
record in ``status.readmitted`` once the operator applied it (docs/gitops.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import ApiModel

#: A Kubernetes node name: a DNS subdomain.
NodeName = Annotated[
    str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
]


class Readmit(ApiModel):
    """Nodes the job avoids (``status.avoidedNodes``) that its later generations may use
    again, e.g. after a repair. The operator never edits the spec, so the request can stay
    in git: it is applied whenever it differs from ``status.readmitted``, and only then."""

    nodes: list[NodeName] = Field(min_length=1, max_length=64, description="Node names to take back.")
    token: str = Field(
        default="", max_length=63,
        description="Change it (a date, a counter) to readmit the same nodes again after the job "
        "avoided them anew.",
    )
