"""``make cluster`` / ``make cluster-down``: a local cluster that outlives this command.

    python -m e2e.cluster up      # build (cached), start, write .cluster/kubeconfig; no-op if running
    python -m e2e.cluster down    # stop every process ``up`` started, and nothing else
"""

from __future__ import annotations

import argparse
import shutil
import sys

from . import controlplane, session

STATE = session.ROOT / ".cluster"


def up() -> int:
    if controlplane.running(STATE):
        print(f"already running: export KUBECONFIG={STATE / 'kubeconfig'}")
        return 0
    controlplane.stop_recorded(STATE)  # a half-dead earlier one
    for sub in ("etcd", "pki", "logs"):
        shutil.rmtree(STATE / sub, ignore_errors=True)
    cp = session.control_plane(STATE, die_with_parent=False, crds=False)  # `helm install` brings them
    cp.start()
    try:
        session.start_node_agent(cp)
        session.start_kwok(cp)
    except BaseException:
        cp.stop()
        raise
    bin_dir = STATE / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("kubectl", "helm", "kwok"):
        link = bin_dir / tool
        link.unlink(missing_ok=True)
        link.symlink_to(cp.settings.bin_dir / tool)
    print(f"control plane at {cp.server}; logs in {STATE / 'logs'}")
    print(f"export KUBECONFIG={cp.kubeconfig} PATH={bin_dir}:$PATH")
    return 0


def down() -> int:
    stopped = controlplane.stop_recorded(STATE)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing running")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.cluster")
    p.add_argument("command", choices=["up", "down"])
    args = p.parse_args(argv)
    try:
        return up() if args.command == "up" else down()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
