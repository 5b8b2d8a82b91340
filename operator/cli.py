"""The ``shardwright`` command.

Each subcommand imports what it needs when it runs, so ``shardwright validate`` starts in
well under a second and never loads Ray or torch.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from shardwright.operator import incluster

#: Exit code for input that fails validation (argparse uses 2 for bad usage, too).
EXIT_INVALID = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shardwright", description="Distributed LLM training and serving, on Kubernetes or on this machine.")
    parser.add_argument("--version", action="version", version=f"shardwright {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    # The commands that read a job run on this machine name it by NAME or by its manifest.
    local = argparse.ArgumentParser(add_help=False)
    local.add_argument("job", metavar="NAME|FILE", help="the job's name (as `shardwright get` lists it) or its manifest")
    local.add_argument("-n", "--namespace", help="the job's namespace, when a NAME is in several")
    local.add_argument("--workdir", type=Path, help="the run's work directory (default .shardwright/NAMESPACE/NAME)")

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

    p = sub.add_parser("serve", help="serve a ServingPool on this machine (replicas as local processes behind one router)")
    p.add_argument("file", type=Path)
    p.add_argument("--port", type=int, default=8000, help="the router's port on 127.0.0.1 (0: a free one; default 8000)")
    p.add_argument("--workdir", type=Path, help="where status, events and logs go (default .shardwright/NAMESPACE/NAME)")
    p.add_argument("--inject", action="append", default=[], metavar="FAULT",
                   help="inject a fault: kill:replica=N:after=SECONDS (after it became routable), slow:[replica=N:]delay=SECONDS (per iteration; every replica without replica=); repeatable")
    p.set_defaults(func=_serve)

    p = sub.add_parser("get", help="list the jobs run on this machine: phase, step, loss, restarts, age")
    p.add_argument("--root", type=Path, default=None, help="where the job directories are (default .shardwright)")
    p.set_defaults(func=_get)

    p = sub.add_parser("status", parents=[local], help="a one-line summary of a job run on this machine, then its conditions and last events")
    p.add_argument("-o", "--output", choices=("json", "yaml"), help="the whole status instead, as `kubectl get tj -o yaml` shows .status")
    p.set_defaults(func=_status)

    p = sub.add_parser("logs", parents=[local], help="print the output of a job's ranks (logs/rank-N.log in its directory)")
    p.add_argument("--rank", type=int, help="only this rank (default: every rank, each line prefixed)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output until the run ends")
    p.set_defaults(func=_logs)

    p = sub.add_parser("plot", parents=[local], help="write a PNG of loss, throughput and restarts against steps (needs matplotlib)")
    p.add_argument("--out", type=Path, help="the PNG to write (default: plot.png in the job's directory)")
    p.set_defaults(func=_plot)

    p = sub.add_parser("export", parents=[local], help="write a committed checkpoint of a job run on this machine as a Hugging Face directory")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: config.json, safetensors and the tokenizer of spec.model.from")
    p.add_argument("-o", "--out", required=True, help="directory or s3://bucket/prefix to write (replaced if it exists)")
    p.add_argument("--step", type=int, help="the committed step to export (default: the newest)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="tensor type written (default float32, as trained)")
    p.add_argument("--adapter", action="store_true", help="a LoRA job (spec.training.lora): only its adapters, in PEFT's layout (default: the model with them merged)")
    p.set_defaults(func=_export)

    p = sub.add_parser("validate", help="check manifests; exit 2 naming every bad field")
    p.add_argument("files", type=Path, nargs="+")
    p.set_defaults(func=_validate)

    p = sub.add_parser("crds", help="generate CustomResourceDefinitions from the API models")
    p.add_argument("--out", type=Path, action="append",
                   help="directory to write (repeatable; default: crds/ and both charts' crd-files/)")
    p.add_argument("--check", action="store_true", help="exit 1 if the files differ instead of writing")
    p.set_defaults(func=_crds)

    p = sub.add_parser("plan", help="plan a TrainingJob's degrees and rank placement, or a ServingPool's GPU mix, on a cluster's nodes")
    p.add_argument("file", type=Path)
    p.add_argument("--nodes", type=Path, required=True, help="NodeList YAML, as `kubectl get nodes -o yaml` prints")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    p.add_argument("--explain", action="store_true", help="add the planner's reasons to the table")
    p.set_defaults(func=_plan)

    incluster.add_parsers(sub)

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
    """``KIND/NAME`` of a document for a message line; escaped when it holds a line break or
    another unprintable character, so each problem stays one line."""
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    kind = doc.get("kind", "document") if isinstance(doc, dict) else "document"
    label = f"{kind}/{name}" if name else f"{kind} #{index + 1}"
    return label if label.isprintable() else ascii(label)


def _validate(args) -> int:
    jobs, problems = _load(args.files)
    for path, job in jobs:
        print(f"{path}: {job.kind}/{job.metadata.name}: valid")
    for line in problems:
        print(line, file=sys.stderr)
    return EXIT_INVALID if problems else 0


def _one_job(path: Path, kind: str = "TrainingJob"):
    """The file's single valid object of ``kind`` (``A or B``: either); None after printing
    why there is not one."""
    jobs, problems = _load([path])
    jobs = [(p, obj) for p, obj in jobs if obj.kind in kind.split(" or ")]
    if not problems and len(jobs) != 1:
        problems = [f"{path}: expected exactly one {kind}, found {len(jobs)}"]
    for line in problems:
        print(line, file=sys.stderr)
    return None if problems else jobs[0][1]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("shardwright")
    except metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "unknown (not installed)"


def _workdir(args, job) -> Path:
    """Where the local runner keeps a job's files: ``--workdir``, else .shardwright/NS/NAME."""
    from shardwright.operator.jobdir import ROOT

    return args.workdir or ROOT / job.metadata.namespace / job.metadata.name


def _job_dir(args):
    """The directory of the job ``args.job`` names (a manifest or a name); None after
    printing why there is none."""
    from shardwright.operator import jobdir

    if args.workdir is not None:
        return jobdir.JobDir(args.workdir)
    if Path(args.job).is_file():
        job = _one_job(Path(args.job))
        return None if job is None else jobdir.JobDir(_workdir(args, job))
    if "/" in args.job or args.job.endswith((".yaml", ".yml")):  # meant as a file: no name has these
        print(f"{args.job}: no such file", file=sys.stderr)
        return None
    try:
        return jobdir.lookup(args.job, args.namespace)
    except LookupError as e:
        print(e, file=sys.stderr)
        return None


def _run(args) -> int:
    if (job := _one_job(args.file)) is None:
        return EXIT_INVALID
    from shardwright.operator import jobdir
    from shardwright.workers.faults import parse_fault

    try:
        faults = tuple(parse_fault(text) for text in args.inject)
    except ValueError as e:
        print(f"--inject: {e}", file=sys.stderr)
        return EXIT_INVALID
    problems, notes = _check_faults(job, list(zip(args.inject, faults)))
    for line in problems:
        print(f"--inject {line}", file=sys.stderr)
    if problems:
        return EXIT_INVALID

    workdir = _workdir(args, job)
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    meta = job.metadata
    if (step := jobdir.JobDir(workdir).completed_at(job.spec.training.steps)) is not None:
        print(f"TrainingJob {meta.namespace}/{meta.name} is already complete at step {step} ({workdir}); --fresh to train it again")
        return 0
    for line in notes:
        print(f"--inject {line}", file=sys.stderr)

    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a single-user local cluster
    from shardwright.operator import runner

    settings = runner.RunSettings(
        workdir=workdir, ray_address=args.ray_address, progress_bar=not args.no_progress,
        ranks=args.ranks, faults=faults,
    )
    return runner.run(job, settings).exit_code


def _serve(args) -> int:
    if (pool := _one_job(args.file, "ServingPool")) is None:
        return EXIT_INVALID
    from shardwright.operator.backends import localpool

    try:
        faults = tuple(localpool.parse_pool_fault(text) for text in args.inject)
    except ValueError as e:
        print(f"--inject: {e}", file=sys.stderr)
        return EXIT_INVALID
    settings = localpool.LocalPoolSettings(workdir=_workdir(args, pool), port=args.port, faults=faults, manifest=args.file)
    return localpool.serve(pool, settings)


def _check_faults(job, faults) -> tuple[list[str], list[str]]:
    """What is wrong with ``--inject`` faults for this job (each would never fire), and notes
    on what a fault will show; faults are ``(text, Fault)`` pairs."""
    problems, notes = [], []
    ranks, total = job.spec.world_size, job.spec.training.steps
    interval = job.spec.checkpoint.interval_steps
    for text, fault in faults:
        if fault.rank is not None and fault.rank >= ranks:
            problems.append(f"{text}: the job has ranks 0-{ranks - 1}, not rank {fault.rank}")
        elif fault.step > total:
            problems.append(f"{text}: step {fault.step} is after the job's last step ({total})")
        elif fault.kind in ("kill", "hang") and fault.gen == 1 and fault.step < interval:
            notes.append(f"{text}: before the first checkpoint (step {interval}), so the restart starts from step 0")
    return problems, notes


def _get(args) -> int:
    import datetime

    from shardwright.operator import jobdir

    root = args.root or jobdir.ROOT
    now = datetime.datetime.now(datetime.timezone.utc)
    rows = [jobdir.row(d, now) for d in jobdir.every(root)]
    if not rows:
        print(f"No jobs under {root}/ (`shardwright run FILE` makes one)", file=sys.stderr)
        return 0
    print(jobdir.table(rows))
    return 0


def _status(args) -> int:
    """The ``status.json`` the local runner keeps in the job's work directory: a summary, or
    all of it with ``-o``."""
    if (job := _job_dir(args)) is None:
        return EXIT_INVALID
    import json

    from shardwright.operator import jobdir

    if (status := job.status()) is None:
        print(f"{args.job}: no status at {job.status_file}; run the job first (`shardwright run FILE`)", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(status, indent=2))
        return 0
    if args.output == "yaml":
        import yaml

        print(yaml.safe_dump(status, sort_keys=False), end="")
        return 0
    print(jobdir.describe(job, status))
    return 0


def _logs(args) -> int:
    if (job := _job_dir(args)) is None:
        return EXIT_INVALID
    from shardwright.operator import jobdir

    logs = job.rank_logs()
    if args.rank is not None:
        if args.rank not in logs:
            have = ", ".join(map(str, logs)) or "none yet"
            print(f"{args.job}: no log of rank {args.rank} in {job.log_dir} (ranks logged: {have})", file=sys.stderr)
            return 1
        logs = {args.rank: logs[args.rank]}
    elif not logs and not args.follow:
        print(f"{args.job}: no rank logs in {job.log_dir}", file=sys.stderr)
        return 1
    prefix = args.rank is None
    try:
        for rank, line in jobdir.read_logs(job, logs, follow=args.follow, all_ranks=args.rank is None):
            print(f"[rank {rank}] {line}" if prefix else line, end="", flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def _plot(args) -> int:
    if (job := _job_dir(args)) is None:
        return EXIT_INVALID
    try:
        from shardwright.operator import plot
    except ImportError as e:
        print(f"shardwright plot needs matplotlib ({e}); install it with: pip install 'matplotlib>=3.8'", file=sys.stderr)
        return 1
    out = args.out or job.path / "plot.png"
    try:
        plot.write(job, out)
    except ValueError as e:
        print(f"{args.job}: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _export(args) -> int:
    """The conversion runs in a worker-side process: this command never imports torch."""
    if (job_dir := _job_dir(args)) is None:
        return EXIT_INVALID
    if (job := _one_job(Path(args.job) if Path(args.job).is_file() else job_dir.manifest_file)) is None:
        return EXIT_INVALID
    if args.adapter and job.spec.training.lora is None:
        print(f"{args.job}: --adapter exports LoRA adapters and spec.training.lora is unset; export without --adapter", file=sys.stderr)
        return 1
    import subprocess

    from shardwright.operator.runner import checkpoint_dir
    from shardwright.workers.manifest import committed

    root = checkpoint_dir(job, job_dir.path)
    found = {m["step"]: m for m in committed(root)}
    step = max(found, default=None) if args.step is None else args.step
    if step not in found:
        have = ", ".join(map(str, sorted(found))) or "none"
        print(f"{args.job}: no committed checkpoint {'' if step is None else f'at step {step} '}under {root} (committed steps: {have})", file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "shardwright.workers.hf.export", found[step]["path"],
               "--config", job.spec.model.resolve().model_dump_json(), "-o", str(args.out), "--dtype", args.dtype]
    if (lora := job.spec.training.lora) is not None:
        command += ["--lora", lora.resolve().model_dump_json(), *(["--adapter"] if args.adapter else [])]
    return subprocess.run(command, check=False).returncode


def _crds(args) -> int:
    from shardwright.operator.api import crd

    outs = args.out or [Path(d) for d in crd.OUT_DIRS]
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
    if (job := _one_job(args.file, "TrainingJob or ServingPool")) is None:
        return EXIT_INVALID
    import json

    import yaml

    from shardwright.operator import planner
    from shardwright.operator.planner import poolmix, report

    try:
        nodes = yaml.safe_load(args.nodes.read_text())
    except (OSError, yaml.YAMLError) as e:
        print(f"--nodes {args.nodes}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return EXIT_INVALID
    if problem := _not_nodes(nodes):
        print(f"--nodes {args.nodes}: {problem}; give a NodeList, as `kubectl get nodes -o yaml` prints", file=sys.stderr)
        return EXIT_INVALID
    try:
        inventory = planner.inventory_from_nodelist(nodes)
        result = planner.search(job.spec, inventory) if job.kind == "TrainingJob" else poolmix.plan_pool(job.spec, inventory)
    except (OSError, yaml.YAMLError, ValueError, LookupError) as e:  # Infeasible and NoTraffic are ValueErrors
        print(f"{args.file}: {e}", file=sys.stderr)
        return EXIT_INVALID
    shown = report if job.kind == "TrainingJob" else poolmix
    if args.output == "table":
        print(report.table(result, explain=args.explain) if shown is report else poolmix.table(result))
    else:
        doc = shown.to_dict(result)
        print(json.dumps(doc, indent=1) if args.output == "json" else yaml.safe_dump(doc, sort_keys=False), end="\n" if args.output == "json" else "")
    return 0


def _not_nodes(doc) -> str | None:
    """Why ``doc`` is not a NodeList (or a list of Nodes); None when it is one."""
    items = doc.get("items") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        return f"no Node objects in it (it holds a {kind or 'document without a kind'})"
    kinds = {item.get("kind", "Node") if isinstance(item, dict) else type(item).__name__ for item in items}
    if kinds - {"Node"}:
        return f"no Node objects in it (it holds {', '.join(sorted(kinds - {'Node'}))})"
    return None


if __name__ == "__main__":
    sys.exit(main())
