"""What ``shardwright operator`` runs with: read once at start, shared by every job's loop."""

from __future__ import annotations

import dataclasses

from shardwright.operator.backends.kubernetes import KubernetesSettings


@dataclasses.dataclass(frozen=True)
class WatchSettings:
    """How the operator lists and watches Pods, Nodes and TrainingJobs (Kopf's watch
    streams, which resume from the last resourceVersion seen, bookmarks included, and list
    afresh on 410 Gone)."""

    #: ``timeoutSeconds`` of each watch request: the API server ends the stream then and it
    #: resumes from the last resourceVersion; 5 minutes, as client-go's reflectors (which
    #: draw 5-10 min). Whole seconds: the API takes an integer.
    server_timeout_s: int = 300
    #: The client's own limit on one watch request, a little past the server's: a stream
    #: whose connection died silently is given up then at the latest.
    client_timeout_s: float = 330.0
    #: Seconds to open a connection (watch or any other request of Kopf's).
    connect_timeout_s: float = 10.0
    #: Seconds any other request of Kopf's (lists, events) may take.
    request_timeout_s: float = 60.0
    #: Objects per page of the initial lists: bounds the memory a large cluster's node
    #: list takes at once (None: one page).
    list_chunk: int | None = 500


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """Everything the handlers need, read once by ``shardwright operator``."""

    kubernetes: KubernetesSettings = dataclasses.field(default_factory=KubernetesSettings)
    watch: WatchSettings = dataclasses.field(default_factory=WatchSettings)
    #: Seconds between passes of a job when nothing happens (progress polling); events wake
    #: a job at once, so this bounds only how stale step and tokens/s may get.
    resync_seconds: float = 10.0
    #: Seconds between status writes that would only update per-step figures (step, loss,
    #: tokens/s, step times): those are metrics, scraped as often as one likes; a change a
    #: user acts on (phase, generation, ranks, checkpoint, restarts) is written at once.
    progress_status_seconds: float = 30.0
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
