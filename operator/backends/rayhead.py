"""The driver of a ``runtime: ray`` generation, in its head pod: ``shardwright ray-head``.

It starts the Ray head (``ray start --head --block``, ended with the driver), waits until
every worker pod of the generation has joined as a Ray node (each offers a custom resource
named after the pod, see raypods.py), then runs the generation through the local backend:
one ``RankActor`` per rank, pinned to the pod the plan put it on, the rendezvous at rank
0's pod. It exits when the ranks are done:

- 0: every rank finished, or stopped after a checkpoint because the pod got SIGTERM (the
  operator's graceful stop: suspend, resize, a replaced straggler);
- 1: a rank failed (it raised, or its process died with its pod), or the worker pods did
  not all join within the join timeout. The reason is the last log line and the pod's
  termination message, so the operator's RankFailed event carries it.

The operator reads the generation's outcome from this pod (``podstatus.observe_pods``). Torch is
imported in the rank actors only, never here.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import ray

from shardwright.operator.api import RankState, Reason
from shardwright.operator.controller import RankObservation, StopGeneration
from shardwright.workers.config import CONFIG_ENV, TOKEN_ENV, RankEnv, WorkerConfig
from shardwright.workers.raynode import answers, start_ray

from .local import LocalRayBackend, LocalSettings, RankSlot
from .raypods import GCS_PORT, RAY_PODS_ENV, RayPod, decode_pods

log = logging.getLogger(__name__)
#: Where Kubernetes reads a container's termination message.
TERMINATION_LOG = Path("/dev/termination-log")
#: Seconds the Ray head may take to accept connections after ``ray start``.
HEAD_START_TIMEOUT_S = 60.0
#: Seconds a failure waits for the other failures of the same moment.
SETTLE_S = 2.0


@dataclasses.dataclass(frozen=True)
class HeadSettings:
    #: Port of the Ray GCS, where the worker pods join.
    port: int = GCS_PORT
    #: Seconds the worker pods have to join once the head is up.
    join_timeout_s: float = 600.0
    #: Seconds between looks at the ranks.
    poll_s: float = 1.0
    #: More ``ray start --head`` options (a local run's ``--temp-dir``, for one).
    ray_start_args: tuple[str, ...] = ()


def pod_slots(pods: list[RayPod], hosts: Mapping[str, str], master_port: int) -> list[RankSlot]:
    """Every rank's slot, in rank order: pinned to its pod's Ray node by the pod's resource,
    local rank i serving telemetry on the pod's port + i, the rendezvous at rank 0's pod."""
    pods = sorted(pods, key=lambda p: p.first_rank)
    world = sum(p.ranks for p in pods)
    master = hosts[pods[0].name]
    return [
        RankSlot(
            RankEnv(rank=pod.first_rank + i, world_size=world, local_rank=i, master_addr=master,
                    master_port=master_port, telemetry_port=pod.telemetry_port + i),
            host=hosts[pod.name], resources={pod.name: 1},
        )
        for pod in pods for i in range(pod.ranks)
    ]


def joined(pods: list[RayPod]) -> dict[str, str]:
    """Pod name -> address of the live Ray node offering that pod's resource."""
    hosts = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for pod in pods:
                if node["Resources"].get(pod.name, 0) >= pod.ranks:
                    hosts[pod.name] = node["NodeManagerAddress"]
    return hosts


def run(environ: Mapping[str, str], settings: HeadSettings, stop: threading.Event) -> tuple[int, str]:
    """Drive one generation; returns the exit code and why."""
    config = WorkerConfig.model_validate_json(environ[CONFIG_ENV])
    pods = decode_pods(environ[RAY_PODS_ENV])
    head = start_ray(
        "--head", f"--port={settings.port}", "--num-cpus=0", "--include-dashboard=false",
        "--disable-usage-stats", *settings.ray_start_args,
    )
    backend = LocalRayBackend(LocalSettings(checkpoint_dir=config.checkpoint.dir, ray_address=f"127.0.0.1:{settings.port}"),
                              token=environ.get(TOKEN_ENV))
    try:
        began = time.monotonic()
        while not answers("127.0.0.1", settings.port):
            if head.poll() is not None or time.monotonic() - began > HEAD_START_TIMEOUT_S:
                return 1, f"The Ray head did not start (ray start exited {head.poll()})"
            time.sleep(0.2)
        backend.connect()
        stop_on_signals(stop)  # again: ray.init replaced the SIGTERM handler with an exit
        hosts = _wait_for_pods(pods, settings, stop)
        if len(hosts) < len(pods):
            if stop.is_set():
                return 0, "Stopped before the ranks started"
            missing = sorted(p.name for p in pods if p.name not in hosts)
            return 1, f"Worker pods {', '.join(missing)} did not join the Ray head within {settings.join_timeout_s:g}s"
        log.info(f"Generation {config.generation}: {len(pods)} worker pods joined; starting {config.parallel.world_size} ranks")
        backend.launch(config.generation, config, pod_slots(pods, hosts, int(environ["MASTER_PORT"])))
        return _drive(backend, config.generation, settings.poll_s, stop)
    finally:
        backend.close()
        head.terminate()
        head.wait()


def _wait_for_pods(pods: list[RayPod], settings: HeadSettings, stop: threading.Event) -> dict[str, str]:
    deadline = time.monotonic() + settings.join_timeout_s
    while len(hosts := joined(pods)) < len(pods) and time.monotonic() < deadline and not stop.is_set():
        stop.wait(settings.poll_s)
    return hosts


def _drive(backend: LocalRayBackend, generation: int, poll_s: float, stop: threading.Event) -> tuple[int, str]:
    """Watch the ranks until they are done; SIGTERM (``stop``) asks them for a checkpoint first."""
    stopping, step = False, None
    while True:
        if stop.is_set() and not stopping:
            log.info("Stop requested: the ranks write a checkpoint at the next step and exit")
            backend.stop(StopGeneration(generation, graceful=True, reason=Reason.STOPPED))
            stopping = True
        seen = backend.observe(datetime.datetime.now(datetime.timezone.utc))
        ranks = seen.of_generation(generation)
        if any(r.state is RankState.FAILED for r in ranks):
            failed = _failures(backend, generation, ranks)
            backend.stop(StopGeneration(generation, graceful=False, reason=Reason.RANK_FAILED))
            return 1, "; ".join(f"Rank {r.rank} failed: {r.message}" for r in failed)
        if all(r.state is RankState.SUCCEEDED for r in ranks):
            at = f" (step {seen.progress.step})" if seen.progress else ""
            return 0, f"Every rank stopped after a checkpoint{at}" if stopping else f"Every rank finished{at}"
        if (p := seen.progress) is not None and p.step != step:
            step = p.step
            log.info(f"step {p.step} loss {p.loss} tokens/s {p.tokens_per_second}")
        stop.wait(poll_s)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (pod deletion) and Ctrl-C set ``stop``: the ranks checkpoint, then we exit."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def _failures(backend: LocalRayBackend, generation: int, ranks: tuple[RankObservation, ...]) -> list[RankObservation]:
    """Every rank failed by now, those whose process died first: a rank that dies breaks its
    peers' collectives within milliseconds, so Ray gets ``SETTLE_S`` to report them all."""
    deadline = time.monotonic() + SETTLE_S
    while any(r.alive for r in ranks) and time.monotonic() < deadline:
        time.sleep(0.1)
        ranks = backend.observe(datetime.datetime.now(datetime.timezone.utc)).of_generation(generation)
    return sorted((r for r in ranks if r.state is RankState.FAILED), key=lambda r: (not r.died, r.rank))


def main(environ: Mapping[str, str], settings: HeadSettings) -> int:
    """``shardwright ray-head``: run, log why it ended, leave the reason for Kubernetes."""
    stop = threading.Event()
    stop_on_signals(stop)
    code, why = run(environ, settings, stop)
    (log.info if code == 0 else log.error)(why)
    if code != 0 and TERMINATION_LOG.exists():  # the kubelet provides it in a pod
        TERMINATION_LOG.write_text(why)
    return code
