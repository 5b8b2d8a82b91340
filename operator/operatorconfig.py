"""What ``shardwright operator`` runs with: read once at start, shared by every job's loop."""

from __future__ import annotations

import dataclasses

from shardwright.operator.backends.kubernetes import KubernetesSettings


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """Everything the handlers need, read once by ``shardwright operator``."""

    kubernetes: KubernetesSettings = dataclasses.field(default_factory=KubernetesSettings)
    #: Seconds between passes of a job when nothing happens (progress polling); events wake
    #: a job at once, so this bounds only how stale step and tokens/s may get.
    resync_seconds: float = 10.0
    #: Seconds to wait after a failed API call (5xx, 409, 429, or a rejected pod), doubled
    #: with each failure in a row up to ``retry_max_seconds``, with +-20 % jitter.
    retry_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    #: Threads running reconcile passes (the Kubernetes client blocks). asyncio's default
    #: pool has min(32, cores + 4) threads, shared with every other ``to_thread`` user: 6 on
    #: a 2-core pod, so at most 6 jobs could wait on the API server at once.
    reconcile_threads: int = 32
    #: Admission webhook port (None: any free port); TLS files from the chart's Secret.
    webhook_port: int | None = 9443
    webhook_certfile: str | None = None
    webhook_pkeyfile: str | None = None
    #: Plain HTTP webhook for tests; never in a cluster (the API server requires TLS).
    webhook_insecure: bool = False
    #: Serve the admission webhook at all (off: out of cluster without a certificate).
    webhook: bool = True
    #: Address the webhook, metrics and health endpoints listen on (all interfaces in a pod;
    #: 127.0.0.1 for a local run).
    bind_address: str = "0.0.0.0"
