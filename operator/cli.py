"""The ``shardwright`` command.

Each subcommand imports what it needs when it runs, so ``shardwright validate`` starts in
well under a second and never loads Ray or torch.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

#: Exit code for input that fails validation (argparse uses 2 for bad usage, too).
EXIT_INVALID = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shardwright", description="Distributed LLM training and serving, on Kubernetes or on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a TrainingJob on this machine (ranks as local Ray actors)")
    p.add_argument("file", type=Path)
    p.add_argument("--workdir", type=Path, help="where checkpoints, status and logs go (default .shardwright/NAMESPACE/NAME)")
    p.add_argument("--fresh", action="store_true", help="delete the work directory first instead of resuming")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting one")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    p.add_argument("--ranks", type=int, help="ranks this machine offers the job (default: what the spec asks)")
    p.add_argument("--inject", action="append", default=[], metavar="FAULT",
                   help="inject a fault, e.g. kill:rank=1:step=30, hang:rank=0:step=50, slow:rank=1:factor=1.5, "
                        "corrupt-checkpoint:step=40, shrink:ranks=1:step=60, grow:step=90 (repeatable)")
    p.set_defaults(func=_run)

    p = sub.add_parser("status", help="print the last known status of a job run on this machine, as kubectl shows .status")
    p.add_argument("file", type=Path)
    p.add_argument("--workdir", type=Path, help="the run's work directory (default .shardwright/NAMESPACE/NAME)")
    p.add_argument("-o", "--output", choices=("json", "yaml"), default="yaml")
    p.set_defaults(func=_status)

    p = sub.add_parser("validate", help="check manifests; exit 2 naming every bad field")
    p.add_argument("files", type=Path, nargs="+")
    p.set_defaults(func=_validate)

    p = sub.add_parser("crds", help="generate CustomResourceDefinitions from the API models")
    p.add_argument("--out", type=Path, action="append",
                   help="directory to write (repeatable; default: crds/ and the chart's crd-files/)")
    p.add_argument("--check", action="store_true", help="exit 1 if the files differ instead of writing")
    p.set_defaults(func=_crds)

    p = sub.add_parser("plan", help="plan degrees and rank placement of a TrainingJob on a cluster's nodes")
    p.add_argument("file", type=Path)
    p.add_argument("--nodes", type=Path, required=True, help="NodeList YAML, as `kubectl get nodes -o yaml` prints")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    p.add_argument("--explain", action="store_true", help="add the planner's reasons to the table")
    p.set_defaults(func=_plan)

    p = sub.add_parser("operator", help="run the Kubernetes operator (Kopf) in this process")
    p.add_argument("--namespace", action="append", default=[], help="watch only this namespace (repeatable; default: the cluster)")
    p.add_argument("--image", help="worker image for groups that name none")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)")
    p.add_argument("--health-port", type=int, default=8081, help="Kopf liveness /healthz port (0: off)")
    p.add_argument("--webhook-port", type=int, default=9443)
    p.add_argument("--webhook-cert-dir", type=Path, default=Path("/certs"), help="tls.crt and tls.key of the webhook")
    p.add_argument("--lease-namespace", help="namespace of the leader Lease (default: no leader election)")
    p.add_argument("--gang-scheduler", choices=["volcano", "scheduler-plugins"], help="create a PodGroup per generation")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds pods may stay Pending")
    p.add_argument("--cordon-nodes", action="store_true",
                   help="cordon a replaced straggler's node when the job's stragglerPolicy.cordon asks (needs patch on nodes)")
    p.set_defaults(func=_operator)

    p = sub.add_parser("ray-head", help="drive one runtime: ray generation from its head pod (the operator renders this command)")
    p.add_argument("--port", type=int, default=6379, help="port of the Ray head, where the worker pods join")
    p.add_argument("--join-timeout", type=float, default=600.0, help="seconds the worker pods have to join")
    p.add_argument("--ray-start-arg", action="append", default=[], metavar="OPTION",
                   help="another `ray start --head` option, e.g. --ray-start-arg=--temp-dir=/tmp/r (repeatable)")
    p.set_defaults(func=_ray_head)

    args = parser.parse_args(argv)
    return args.func(args)


def _load(files: list[Path]):
    """Every TrainingJob in ``files``, and one printable line per problem found."""
    from shardwright.operator.api import InvalidManifest, validate
    from shardwright.operator.api.validation import load_documents

    jobs, problems = [], []
    for path in files:
        try:
            docs = load_documents(path)
        except InvalidManifest as e:
            problems += [f"{path}: {p}" for p in e.problems]
            continue
        for index, doc in enumerate(docs):
            obj, errors = validate(doc)
            name = _doc_name(doc, index)
            problems += [f"{path}: {name}: {p}" for p in errors]
            if obj is not None:
                jobs.append((path, obj))
    return jobs, problems


def _doc_name(doc, index: int) -> str:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    kind = doc.get("kind", "document") if isinstance(doc, dict) else "document"
    return f"{kind}/{name}" if name else f"{kind} #{index + 1}"


def _validate(args) -> int:
    jobs, problems = _load(args.files)
    for path, job in jobs:
        print(f"{path}: {job.kind}/{job.metadata.name}: valid")
    for line in problems:
        print(line, file=sys.stderr)
    return EXIT_INVALID if problems else 0


def _one_job(path: Path):
    """The file's single valid TrainingJob; None after printing why there is not one."""
    jobs, problems = _load([path])
    if not problems and len(jobs) != 1:
        problems = [f"{path}: expected exactly one TrainingJob, found {len(jobs)}"]
    for line in problems:
        print(line, file=sys.stderr)
    return None if problems else jobs[0][1]


def _workdir(args, job) -> Path:
    """Where the local runner keeps a job's files: ``--workdir``, else .shardwright/NS/NAME."""
    return args.workdir or Path(".shardwright") / job.metadata.namespace / job.metadata.name


def _run(args) -> int:
    if (job := _one_job(args.file)) is None:
        return EXIT_INVALID
    from shardwright.workers.faults import parse_fault

    try:
        faults = tuple(parse_fault(text) for text in args.inject)
    except ValueError as e:
        print(f"--inject: {e}", file=sys.stderr)
        return EXIT_INVALID

    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a single-user local cluster
    from shardwright.operator import runner

    workdir = _workdir(args, job)
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    settings = runner.RunSettings(
        workdir=workdir, ray_address=args.ray_address, progress_bar=not args.no_progress,
        ranks=args.ranks, faults=faults,
    )
    return runner.run(job, settings).exit_code


def _status(args) -> int:
    """The ``status.json`` the local runner keeps in the job's work directory."""
    if (job := _one_job(args.file)) is None:
        return EXIT_INVALID
    import json

    meta = job.metadata
    path = _workdir(args, job) / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"{meta.namespace}/{meta.name}: no status at {path} ({e.__class__.__name__}); run `shardwright run {args.file}` first", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(status, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(status, sort_keys=False), end="")
    return 0


def _crds(args) -> int:
    from shardwright.operator.api import crd

    outs = args.out or [Path("crds"), Path("helm/shardwright/crd-files")]
    if args.check:
        stale = [out / name for out in outs for name in crd.drifted(out)]
        for path in stale:
            print(f"{path}: differs from the API models; run `shardwright crds`", file=sys.stderr)
        return 1 if stale else 0
    for out in outs:
        for path in crd.write_all(out):
            print(path)
    return 0


def _plan(args) -> int:
    if (job := _one_job(args.file)) is None:
        return EXIT_INVALID
    import json

    import yaml

    from shardwright.operator import planner
    from shardwright.operator.planner import report

    try:
        inventory = planner.inventory_from_nodelist(yaml.safe_load(args.nodes.read_text()))
        result = planner.search(job.spec, inventory)
    except (OSError, yaml.YAMLError, ValueError, LookupError) as e:  # Infeasible is a ValueError
        print(f"{args.file}: {e}", file=sys.stderr)
        return EXIT_INVALID
    if args.output == "table":
        print(report.table(result, explain=args.explain))
    else:
        doc = report.to_dict(result)
        print(json.dumps(doc, indent=1) if args.output == "json" else yaml.safe_dump(doc, sort_keys=False), end="\n" if args.output == "json" else "")
    return 0


def _operator(args) -> int:
    import asyncio
    import dataclasses
    import logging

    from shardwright.operator import handlers, lease
    from shardwright.operator.backends.kubernetes import KubernetesSettings
    from shardwright.operator.backends.pods import PodSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pods = PodSettings(gang_scheduler=args.gang_scheduler)
    if args.image:
        pods = dataclasses.replace(pods, image=args.image)
    cfg = handlers.OperatorConfig(
        kubernetes=KubernetesSettings(pods=pods, startup_timeout_s=args.startup_timeout, cordon_nodes=args.cordon_nodes),
        webhook_port=args.webhook_port,
        webhook_certfile=str(args.webhook_cert_dir / "tls.crt"),
        webhook_pkeyfile=str(args.webhook_cert_dir / "tls.key"),
    )
    leader = None
    if args.lease_namespace:
        import os

        identity = os.environ.get("POD_NAME") or os.uname().nodename
        leader = lease.LeaderLease(handlers.api_client(), lease.LeaseSettings(namespace=args.lease_namespace, identity=identity))
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    try:
        asyncio.run(handlers.serve(
            cfg, namespaces=args.namespace, liveness_endpoint=liveness,
            metrics_port=args.metrics_port or None, lease=leader,
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


if __name__ == "__main__":
    sys.exit(main())
