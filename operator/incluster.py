"""The subcommands that run inside the cluster's pods: ``shardwright operator`` (the chart's
Deployment) and ``shardwright ray-head`` (a ``runtime: ray`` generation's head pod).

Like every subcommand they import what they need when they run: the operator never imports
torch, and ``shardwright validate`` never pays for Kopf.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("operator", help="run the Kubernetes operator (Kopf) in this process")
    p.add_argument("--namespace", action="append", default=[], help="watch only this namespace (repeatable; default: the cluster)")
    p.add_argument("--image", help="worker image for groups that name none")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    p.add_argument("--health-port", type=int, default=8081, help="/healthz (liveness) and /readyz (the webhook serves) port (0: off)")
    p.add_argument("--webhook-port", type=int, default=9443)
    p.add_argument("--bind-address", default="0.0.0.0", help="address of the webhook, metrics and health endpoints")
    p.add_argument("--webhook-cert-dir", type=Path, default=Path("/certs"),
                   help="tls.crt and tls.key of the webhook (with --webhook-secret: written there from the Secret)")
    p.add_argument("--webhook", choices=["auto", "on", "off"], default="auto",
                   help="serve the admission webhook: on (certificate required), off, or auto: on when the certificate exists")
    p.add_argument("--webhook-secret", help="Secret holding the webhook's certificate, re-read every minute (implies --webhook=on)")
    p.add_argument("--webhook-namespace", help="namespace of --webhook-secret and --webhook-service")
    p.add_argument("--webhook-service", help="Service the API server calls: this operator issues the certificate for its names")
    p.add_argument("--webhook-configuration", help="ValidatingWebhookConfiguration whose caBundle this operator sets to its CA")
    p.add_argument("--checkpoint-claim", help="PersistentVolumeClaim mounted at /checkpoints in every worker pod")
    p.add_argument("--worker-service-account", help="ServiceAccount of every worker pod (default: the namespace's default)")
    p.add_argument("--lease-namespace", help="namespace of the leader Lease (default: no leader election)")
    p.add_argument("--gang-scheduler", choices=["volcano", "scheduler-plugins", "kueue"],
                   help="place each generation's pods all or none: a PodGroup (volcano, scheduler-plugins) or a Kueue pod group")
    p.add_argument("--gang-scheduler-name",
                   help="schedulerName of scheduler-plugins' scheduler (default: its chart's, scheduler-plugins-scheduler)")
    p.add_argument("--gang-queue", help="Volcano queue or Kueue LocalQueue of jobs whose label names none")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds pods may stay Pending")
    p.add_argument("--status-progress-seconds", type=float, default=30.0,
                   help="least seconds between status writes that only move step, loss and tokens/s (the metrics get every pass)")
    p.add_argument("--cordon-nodes", action="store_true",
                   help="cordon a replaced straggler's node when the job's stragglerPolicy.cordon asks (needs patch on nodes)")
    p.add_argument("--network-policy", metavar="PEERS_JSON",
                   help="a NetworkPolicy per job: its pods take traffic from each other, and from these NetworkPolicyPeers "
                        "(a JSON list: the operator's pods, a Prometheus) on the telemetry ports only")
    p.add_argument("--token-key-secret", metavar="NAMESPACE/NAME",
                   help="Secret keeping the key of the jobs' telemetry tokens, made there when missing (default: a key of this "
                        "process; a restarted operator's probes of running jobs are then refused)")
    p.set_defaults(func=_operator)

    p = sub.add_parser("ray-head", help="drive one runtime: ray generation from its head pod (the operator renders this command)")
    p.add_argument("--port", type=int, default=6379, help="port of the Ray head, where the worker pods join")
    p.add_argument("--join-timeout", type=float, default=600.0, help="seconds the worker pods have to join")
    p.add_argument("--ray-start-arg", action="append", default=[], metavar="OPTION",
                   help="another `ray start --head` option, e.g. --ray-start-arg=--temp-dir=/tmp/r (repeatable)")
    p.set_defaults(func=_ray_head)


def _operator(args) -> int:
    import asyncio
    import dataclasses
    import logging

    from kubernetes import client

    from shardwright.operator import handlers, lease, tokenkey, webhook
    from shardwright.operator.backends import dataplane
    from shardwright.operator.backends.kubernetes import KubernetesSettings
    from shardwright.operator.backends.pods import PodSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        certs = webhook.from_secret(args.webhook_cert_dir, secret=args.webhook_secret, namespace=args.webhook_namespace,
                                    service=args.webhook_service, configuration=args.webhook_configuration) if args.webhook_secret else None
        # From a Secret, the files are written before the webhook listens.
        tls = (str(certs.cert_dir / "tls.crt"), str(certs.cert_dir / "tls.key")) if certs else webhook.tls_files(args.webhook_cert_dir, args.webhook)
    except webhook.ConfigError as e:
        print(f"shardwright operator: {e}", file=sys.stderr)
        return 2
    try:
        peers = dataplane.parse_peers(args.network_policy) if args.network_policy is not None else None
        key_at = tokenkey.parse(args.token_key_secret) if args.token_key_secret else None
    except ValueError as e:
        print(f"shardwright operator: {e}", file=sys.stderr)
        return 2
    try:
        token_key = tokenkey.ensure(client.CoreV1Api(handlers.api_client()), *key_at) if key_at else dataplane.PROCESS_KEY
    except tokenkey.TokenKeyError as e:
        print(f"shardwright operator: the telemetry token key: {e}", file=sys.stderr)
        return 2
    pods = PodSettings(gang_scheduler=args.gang_scheduler, gang_queue=args.gang_queue, checkpoint_claim=args.checkpoint_claim,
                       service_account=args.worker_service_account)
    if args.image:
        pods = dataclasses.replace(pods, image=args.image)
    if args.gang_scheduler_name:
        pods = dataclasses.replace(pods, gang_scheduler_name=args.gang_scheduler_name)
    cfg = handlers.OperatorConfig(
        kubernetes=KubernetesSettings(pods=pods, startup_timeout_s=args.startup_timeout, cordon_nodes=args.cordon_nodes,
                                      network_policy_peers=peers, token_key=token_key),
        webhook_port=args.webhook_port if tls else None,
        webhook_certfile=tls[0] if tls else None,
        webhook_pkeyfile=tls[1] if tls else None,
        webhook=tls is not None,
        bind_address=args.bind_address,
        progress_status_seconds=args.status_progress_seconds,
    )
    leader = None
    if args.lease_namespace:
        import os

        identity = os.environ.get("POD_NAME") or os.uname().nodename
        leader = lease.LeaderLease(handlers.api_client(), lease.LeaseSettings(namespace=args.lease_namespace, identity=identity))
    try:
        asyncio.run(handlers.serve(
            cfg, namespaces=args.namespace, metrics_port=args.metrics_port or None, lease=leader,
            health_port=args.health_port or None, certs=certs,
        ))
    except lease.LeaseLost as e:
        logging.getLogger("shardwright.operator").error(f"{e}; exiting for a fresh start")
        return 1
    return 0


def _ray_head(args) -> int:
    """The generation comes from the pod's env (see operator/backends/raypods.py)."""
    import logging
    import os

    from shardwright.operator.backends import rayhead

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = rayhead.HeadSettings(port=args.port, join_timeout_s=args.join_timeout, ray_start_args=tuple(args.ray_start_arg))
    return rayhead.main(os.environ, settings)
