"""How a process-backed node runs one container: the installed project, as a process.

The image is the one thing that is not real: the container's command runs from this
machine's project environment (``PATH`` starts with the venv's bin). Everything else a pod
sees is made as the kubelet makes it, with Linux namespaces instead of a container runtime:
the pod's network namespace (podnet.py: its own IP, localhost and ports), and a private
mount and UTS namespace with the pod's hostname, its own /etc/hosts (the cluster's pod DNS
names, see nodeagent.py), its volumes bind-mounted at their mountPaths (service-account
token at the standard path, emptyDir, secret, configMap, PVC as folders), and a
termination-message file at terminationMessagePath.

Not enforced: resources, securityContext (processes run as this machine's user), images.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool = False


@dataclasses.dataclass(frozen=True)
class Launch:
    """Everything needed to start one container of a pod."""

    argv: list[str]
    env: dict[str, str]
    #: The pod's network namespace (a /run/netns path).
    netns: str
    hostname: str
    hosts_file: Path
    mounts: tuple[Mount, ...]
    termination_log: Path
    termination_path: str
    workdir: str
    log: Path


#: Where a pod's sources are staged before its mounts may hide them (a pod that mounts an
#: emptyDir at /tmp hides this machine's /tmp, where its volumes' folders may live).
STAGE = "/dev/.shardwright-stage"


def image_paths() -> tuple[str, ...]:
    """What stands for the image: the project's environment, its source (an editable
    install) and the Python it was made from. A pod volume mounted over one of them (an
    emptyDir at /tmp, with the repository under /tmp) must not hide it from the pod."""
    repo = Path(__file__).resolve().parents[2]
    return tuple(sorted({sys.prefix, sys.base_prefix, str(repo)}))


def script(launch: Launch) -> str:
    """The shell that prepares the namespaces and then becomes the container's command."""
    q = shlex.quote
    term = launch.termination_path
    sources = [(str(launch.hosts_file), "/etc/hosts", False), (str(launch.termination_log), term, False)]
    sources += [(str(m.source), m.target, m.read_only) for m in sorted(launch.mounts, key=lambda m: m.target.count("/"))]
    targets = [m.target.rstrip("/") + "/" for m in launch.mounts]
    # Mounted again, last, where a volume would hide them (the image sits below the volumes).
    sources += [(p, p, True) for p in image_paths() if any((p + "/").startswith(t) for t in targets)]
    lines = ["set -e", f"hostname {q(launch.hostname)}", f"mkdir -p {STAGE}", f"mount -t tmpfs -o size=1m shardwright-stage {STAGE}"]
    for i, (source, _, _) in enumerate(sources):
        make = f"mkdir {STAGE}/{i}" if Path(source).is_dir() else f"touch {STAGE}/{i}"
        lines += [make, f"mount --bind {q(source)} {STAGE}/{i}"]
    for i, (source, target, read_only) in enumerate(sources):
        if Path(source).is_dir():
            lines.append(f"mkdir -p {q(target)} 2>/dev/null || true")
        else:
            lines.append(f"mkdir -p {q(os.path.dirname(target))}; [ -e {q(target)} ] || touch {q(target)}")
        lines.append(f"mount --bind {STAGE}/{i} {q(target)}")
        if read_only:
            lines.append(f"mount -o remount,bind,ro {q(target)}")
    lines += [f"umount -l {STAGE}", f"cd {q(launch.workdir)}", 'exec "$@"']
    return "\n".join(lines) + "\n"


def start(launch: Launch) -> subprocess.Popen:
    """Start the container as the leader of a new process group (ended as a group)."""
    launch.termination_log.touch()
    log = open(launch.log, "ab")
    try:
        return subprocess.Popen(
            ["nsenter", f"--net={launch.netns}", "--", "unshare", "--mount", "--uts", "--propagation", "private", "--",
             "/bin/sh", "-c", script(launch), "container", *launch.argv],
            env=launch.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_agent,
        )
    finally:
        log.close()


def _die_with_agent() -> None:
    """preexec: the container gets SIGKILL if the agent itself dies (kept across exec)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def project_path() -> str:
    """PATH inside pods: the project's environment first (what the image would carry)."""
    return os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"])
