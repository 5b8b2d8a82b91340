"""Where the controller's actions land on a cluster: pods, a headless Service, a PodGroup.

One :class:`KubernetesBackend` serves one TrainingJob for one reconcile pass. It does not
list pods itself: the handlers keep a Kopf index of every pod we manage and hand this
backend the job's pod summaries (see ``podstatus.summarize``), so a pass costs no list request.

Ownership is by uid: the pods handed in are the ones whose controller ownerReference is
this job's uid (``podstatus.controller_uid``); a pod of an earlier job of the same name, still
being collected, is ``foreign`` and never adopted. Gang start: every pod of a generation is
created, or none is (a failure deletes the ones already made and raises); the pods are
created side by side, after the objects that guard them (also side by side). Creates are
idempotent: names are deterministic, and a 409 is accepted only when the object there is
this job's (an earlier pass, or an operator restarted mid-start); another owner's object
makes the start wait. A ``runtime: ray`` generation is a Ray head pod and Ray worker pods
(raypods.py), read back as one.

Fencing: pods are deleted with their grace period, and a pod being deleted counts as alive
until its containers have ended (``podstatus.classify``), so the core starts generation N+1 only
once every pod of generation N has stopped. Only a pod stuck Terminating on a NotReady node
is force-deleted, after ``force_delete_after_s``. A PodDisruptionBudget per generation lets
voluntary evictions take at most one of its pods: one eviction restarts the gang once (its
pods carry DisruptionTarget, so the budget is unspent), instead of a drain taking it apart.

Errors are values until the handler boundary: :class:`ApiFailure` carries whether a retry
can help; only ``jobpass.py`` turns it into Kopf's TemporaryError/PermanentError.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

# kubernetes 37 imports its API classes lazily, on first attribute access. Done here, at
# operator start, rather than in the first reconcile passes, where every worker thread
# contended for the import lock: about 1-3 s before the first job got its pods.
CoreV1Api, CustomObjectsApi, PolicyV1Api, NetworkingV1Api = client.CoreV1Api, client.CustomObjectsApi, client.PolicyV1Api, client.NetworkingV1Api

from shardwright.operator.api import GROUP, VERSION, CheckpointRef, EventType, Reason, Runtime, TrainingJob, TrainingJobSpec
from shardwright.operator.controller import Event, Observed, RankObservation, ReplaceRank, SetShares, StartGeneration, StopGeneration

from . import dataplane
from . import pods as render
from . import podstatus
from . import probe, raypods
from .sidebyside import together

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class KubernetesSettings:
    """Read once at operator start-up (CLI flags / chart values) and passed down."""

    pods: render.PodSettings = dataclasses.field(default_factory=render.PodSettings)
    #: Seconds a generation's pods may stay Pending before the generation counts as failed
    #: (restarted with backoff, waiting reason in the condition); None: wait forever.
    startup_timeout_s: float | None = 600.0
    #: Seconds a pod may sit Terminating on a NotReady node before it is force-deleted.
    force_delete_after_s: float = 300.0
    #: Seconds after a generation started from which a rank without a pod counts as lost.
    vanished_after_s: float = 30.0
    #: Poll rank 0's /status for step, throughput and the last committed checkpoint.
    probe_progress: bool = True
    #: May cordon the node of a replaced straggler when the job's ``stragglerPolicy.cordon``
    #: asks (chart value ``cordonNodes``, which also grants ``patch`` on nodes).
    cordon_nodes: bool = False
    #: NetworkPolicyPeers admitted to the ranks' telemetry ports by a NetworkPolicy per job
    #: (``--network-policy``: the operator's pods, a Prometheus); None: no policy.
    network_policy_peers: tuple[dict[str, Any], ...] | None = None
    #: Key of every job's telemetry token (dataplane.token_for): the chart's is kept in a
    #: Secret (``--token-key-secret``, operator/tokenkey.py), so a restarted operator computes
    #: the tokens of running jobs again; else this process's own.
    token_key: bytes = dataplane.PROCESS_KEY


#: Pod phases whose containers have all ended: nothing of the rank runs any more.
ENDED = ("Succeeded", "Failed")


class ApiFailure(Exception):
    """A Kubernetes API call failed; ``retryable``: a later attempt may succeed (5xx, 429,
    409 on update, connection errors), otherwise the request itself is wrong (403, 422)."""

    def __init__(self, what: str, status: int | None, message: str) -> None:
        self.status = status
        self.retryable = status is None or status >= 500 or status in (409, 429)
        super().__init__(f"{what}: HTTP {status}: {message}" if status else f"{what}: {message}")


def _failure(what: str, exc: Exception) -> ApiFailure:
    if isinstance(exc, ApiException):
        return ApiFailure(what, exc.status, _server_message(exc))
    return ApiFailure(what, None, f"{type(exc).__name__}: {exc}")


def _server_message(exc: ApiException) -> str:
    """The API server's own words: the ``message`` of the Status it answered with (which
    names the field or the policy), else the HTTP reason."""
    try:
        message = json.loads(exc.body).get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return (message or exc.reason or str(exc.body) or "").strip()[:1000]


class KubernetesBackend:
    """The Backend protocol for one job, over the Kubernetes API."""

    def __init__(
        self,
        api: client.ApiClient,
        settings: KubernetesSettings,
        owner: render.Owner,
        spec: TrainingJobSpec,
        pods: list[dict[str, Any]],
        *,
        node_ready: dict[str, bool] | None = None,
        known_checkpoint: CheckpointRef | None = None,
        avoided_nodes: Sequence[str] = (),
        request_json: Callable[..., dict[str, Any] | None] = probe.request_json,
        foreign: Sequence[str] = (),
        expected: tuple[int, int, bool] | None = None,
        rank_nodes: dict[int, str] | None = None,
        nodes_back: frozenset[str] = frozenset(),
    ) -> None:
        self.core = CoreV1Api(api)
        self.custom = CustomObjectsApi(api)
        self.policy = PolicyV1Api(api)
        self.networking = NetworkingV1Api(api)
        self.settings = settings
        self.owner = owner
        self.spec = spec
        self.pods = pods
        self.node_ready = node_ready
        self.known_checkpoint = known_checkpoint
        #: Nodes this job's pods keep off (``status.avoidedNodes``); ``replace`` adds to it.
        self.avoided_nodes = list(avoided_nodes)
        self.request_json = request_json
        #: Names of pods with this job's labels but another controller (an earlier job of
        #: the same name): a generation whose pod names they hold waits for them to go.
        self.foreign = set(foreign)
        #: (generation, world size, ran) when every rank of that generation should have a
        #: pod: a rank that none shows was deleted from outside (``kubectl delete --force``),
        #: or never made (an operator that died mid-start).
        self.expected = expected
        #: Node of each rank of that generation, as the status last recorded it.
        self.rank_nodes = rank_nodes or {}
        #: Nodes Ready again after being NotReady since the current generation started.
        self.nodes_back = nodes_back
        #: Pod names this pass created or deleted: what the caller's cache does not show yet.
        self.created: list[str] = []
        self.deleted: list[str] = []

    # ------------------------------------------------------------------ actions

    def start(self, action: StartGeneration) -> None:
        ns = self.owner.namespace
        groups = {g.name: g for g in self.spec.workers}
        rendering = raypods.render_pods if self.spec.runtime is Runtime.RAY else render.render_pods
        manifests = rendering(self.owner, action, groups, self.settings.pods)
        if held := sorted(self.foreign & {m["metadata"]["name"] for m in manifests}):
            raise ApiFailure(f"start generation {action.generation}", 409, f"pods {', '.join(held)} belong to an earlier "
                             f"TrainingJob named {self.owner.name} and are still being deleted; waiting for them to go")
        # First what the pods need or are guarded by, side by side; then the pods.
        # The core starts a generation only once the older ones have stopped: what is left
        # of them are ended pods, removed now (their containers are gone, so grace 0 is safe).
        before: list[Callable[[], Any]] = [lambda name=pod["name"]: self._delete_pod(name, grace=0, quiet=True)
                                           for pod in self.pods if pod["generation"] < action.generation and pod["phase"] in ENDED]
        before.append(self._guard_data_plane)
        before.append(lambda: self._create("Service", lambda body: self.core.create_namespaced_service(ns, body, _preload_content=False),
                                           render.render_service(self.owner, self.settings.pods),
                                           lambda name: self.core.read_namespaced_service(name, ns, _preload_content=False)))
        if (group := render.render_pod_group(self.owner, action, self.settings.pods, len(manifests))) is not None:
            g, v = group["apiVersion"].split("/")
            before.append(lambda: self._create("PodGroup", lambda body: self.custom.create_namespaced_custom_object(g, v, ns, "podgroups", body, _preload_content=False), group,
                                               lambda name: self.custom.get_namespaced_custom_object(g, v, ns, "podgroups", name, _preload_content=False)))
        if action.generation > 1:
            before.append(lambda: self._delete_budget(action.generation - 1))
        if (budget := render.render_disruption_budget(self.owner, action.generation, len(manifests))) is not None:
            before.append(lambda: self._create("PodDisruptionBudget", lambda body: self.policy.create_namespaced_pod_disruption_budget(ns, body, _preload_content=False), budget,
                                               lambda name: self.policy.read_namespaced_pod_disruption_budget(name, ns, _preload_content=False)))
        if errors := [e for e in together(before) if e is not None]:
            raise errors[0]
        manifests = [render.avoid_nodes(m, self.avoided_nodes) for m in manifests]
        errors = together([lambda m=m: self._create("Pod", lambda body: self.core.create_namespaced_pod(ns, body, _preload_content=False), m,
                                                    lambda name: self.core.read_namespaced_pod(name, ns, _preload_content=False))
                           for m in manifests])
        made = [m["metadata"]["name"] for m, e in zip(manifests, errors) if e is None]
        if failed := [e for e in errors if e is not None]:
            # Gang: a partial generation would block in its rendezvous; take it back (none
            # of them ran yet, so nothing needs a grace period).
            together([lambda name=name: self._delete_pod(name, grace=0, quiet=True) for name in made])
            raise failed[0]
        self.created += made

    def stop(self, action: StopGeneration) -> None:
        """Delete the generation's pods with their grace period: SIGTERM, the launcher asks
        the ranks to checkpoint at the next step and exit. Also when the generation failed:
        its pods count as alive until they have stopped, so the next one waits for them.
        Pods that already ended go at once: nothing runs in them."""
        for pod in self.pods:
            if pod["generation"] == action.generation and not pod.get("deleting"):
                self._delete_pod(pod["name"], grace=0 if pod["phase"] in ENDED else None)

    def set_shares(self, action: SetShares) -> None:
        """Hand new work shares to rank 0 (``POST /control`` on its pod); it tells the others
        in the next step-facts all-reduce. Best effort: the controller repeats this until
        rank 0's ``/status`` shows the shares in effect."""
        if (url := self._rank0_url(action.generation, "/control")) is not None:
            self.request_json(url, {"dataShares": list(action.shares)}, token=self._token())

    def replace(self, action: ReplaceRank) -> list[Event]:
        """Keep every later generation off the replaced straggler's node (``avoided_nodes``,
        which the caller persists in ``status.avoidedNodes``) and cordon it when the job's
        policy asks and this operator may. Cordoning is best effort: a failure is a Warning
        event, and the node is avoided all the same."""
        node = action.node
        if node is None:
            return []
        if node not in self.avoided_nodes:
            self.avoided_nodes.append(node)
        events = [Event(EventType.NORMAL, Reason.NODE_AVOIDED, f"Later generations keep off node {node}: rank {action.rank} was a straggler there")]
        if not self.spec.straggler_policy.cordon:
            return events
        if not self.settings.cordon_nodes:
            why = "this operator may not cordon nodes (chart value cordonNodes: false)"
        else:
            try:
                self.core.patch_node(node, {"spec": {"unschedulable": True}}, _content_type="application/merge-patch+json", _preload_content=False)
                return events + [Event(EventType.NORMAL, Reason.NODE_CORDONED, f"Node {node} cordoned: rank {action.rank} was a straggler there")]
            except Exception as e:
                why = str(_failure(f"patch Node {node}", e))
        return events + [Event(EventType.WARNING, Reason.CORDON_FAILED, f"Node {node} not cordoned: {why}; the job avoids it all the same")]

    def _vanished_for_certain(self, now: datetime.datetime) -> list[RankObservation]:
        """Ranks of the expected generation the API server itself has no pod for. The pod
        cache can lag the server by a minute on a busy control plane (1,000 jobs on KWOK):
        a rank missing only from the cache is not lost, so one authoritative list (made
        only when the cache misses a rank) decides. A failed list decides nothing: the next
        pass asks again."""
        generation = self.expected[0]
        selector = f"{render.LABEL_JOB}={self.owner.name},{render.LABEL_GENERATION}={generation}"
        try:
            listed = json.loads(self.core.list_namespaced_pod(self.owner.namespace, label_selector=selector, _preload_content=False).data)
        except Exception as e:
            log.info(f"Pods of {self.owner.namespace}/{self.owner.name} not listed, vanished ranks decided later: {_failure('list Pods', e)}")
            return []
        live = [p for p in map(podstatus.summarize, listed.get("items") or []) if p["owner"] == self.owner.uid and p["name"] not in self.deleted]
        return [self._lost_with_its_node(r) for r in podstatus.vanished_ranks(*self.expected, podstatus.observe_pods(live, now, self.settings.startup_timeout_s))]

    def _lost_with_its_node(self, rank: RankObservation) -> RankObservation:
        return podstatus.gone_with_its_node(rank, self.rank_nodes.get(rank.rank), self.node_ready, self.nodes_back)

    def observe(self, now: datetime.datetime) -> Observed:
        live = [pod for pod in self.pods if pod["name"] not in self.deleted]
        ranks = podstatus.observe_pods(live, now, self.settings.startup_timeout_s)
        if self.expected is not None and podstatus.vanished_ranks(*self.expected, ranks):
            ranks += self._vanished_for_certain(now)
        if self.avoided_nodes:
            # Avoided nodes can leave too few for the generation: say so where users look.
            hint = f"; this job avoids nodes {', '.join(self.avoided_nodes)} (status.avoidedNodes)"
            ranks = [dataclasses.replace(r, message=r.message + hint) if "Unschedulable" in r.message else r for r in ranks]
        if self.node_ready is not None:
            ranks = [dataclasses.replace(r, node_lost=True) if r.node and self.node_ready.get(r.node) is not True else r for r in ranks]
            for name in podstatus.stuck_terminating(self.pods, self.node_ready, now, self.settings.force_delete_after_s):
                self._delete_pod(name, grace=0, quiet=True)
        progress, checkpoint = None, self.known_checkpoint
        status = self._rank0_status() if self.settings.probe_progress else None
        if status is None:
            status = self._rank0_final_report()
        if status is not None:
            progress = probe.progress_from_status(status, status.get("generation", -1))
            checkpoint = probe.checkpoint_from_status(status) or checkpoint
        blocked = ""
        if self.foreign:
            blocked = (f"Pods labelled for this job but made by another (an earlier TrainingJob named {self.owner.name}) "
                       f"still exist: {', '.join(sorted(self.foreign))}; this job starts its pods once they are gone")
        return Observed(now=now, ranks=tuple(ranks), progress=progress, checkpoints=(checkpoint,) if checkpoint else (),
                        stale_placement=self._stale_placement(live), blocked=blocked)

    def close(self) -> None:
        """Nothing to end: the pods outlive the operator process by design."""

    # ------------------------------------------------------------------ helpers

    def _stale_placement(self, pods: list[dict[str, Any]]) -> dict[int, str]:
        """Generations with a pod not yet on a node that keeps off a node this job no longer
        avoids (readmitted): its affinity cannot change, so the generation must start again."""
        out: dict[int, str] = {}
        for pod in pods:
            readmitted = [n for n in pod.get("avoids") or () if n not in self.avoided_nodes]
            if readmitted and not pod.get("node") and not pod.get("deleting"):
                out.setdefault(pod["generation"], f"pod {pod['name']} waits for a node and keeps off "
                               f"{', '.join(readmitted)}, which the job no longer avoids")
        return out

    def _rank0_status(self) -> dict[str, Any] | None:
        if not self.pods:
            return None
        url = self._rank0_url(max(p["generation"] for p in self.pods), "/status")
        return self.request_json(url, token=self._token()) if url is not None else None

    def _rank0_final_report(self) -> dict[str, Any] | None:
        """Rank 0's termination message in its pod's status (JSON, written as it exited): the
        last step, loss and checkpoint even when no probe reached it while it ran."""
        if not self.pods:
            return None
        generation = max(p["generation"] for p in self.pods)
        rank0 = next((p for p in self.pods if p["generation"] == generation and p["rank"] == 0 and p.get("role") != render.ROLE_RAY_HEAD), None)
        message = ((rank0 or {}).get("terminated") or {}).get("message")
        try:
            report = json.loads(message) if message else None
        except ValueError:
            return None
        return report if isinstance(report, dict) else None

    def _rank0_url(self, generation: int, path: str) -> str | None:
        """``path`` on the telemetry port of rank 0's pod in ``generation``, while it runs."""
        rank0 = next((p for p in self.pods if p["generation"] == generation and p["rank"] == 0 and p.get("role") != render.ROLE_RAY_HEAD), None)
        if rank0 is None or rank0["phase"] != "Running" or not rank0.get("ip"):
            return None
        return f"http://{rank0['ip']}:{self.settings.pods.telemetry_port}{path}"

    def _guard_data_plane(self) -> None:
        """The job's token Secret, made once (remembered after), and its NetworkPolicy when
        the operator is told to make one (dataplane.py); both before any pod."""
        ns, uid = self.owner.namespace, self.owner.uid
        if uid not in dataplane.MADE:
            secret = dataplane.render_secret(self.owner, self._token())
            try:
                self.core.create_namespaced_secret(ns, secret, _preload_content=False)
            except ApiException as e:
                if e.status != 409:  # 409: its name holds this job's uid, so it is this job's
                    raise _failure(f"create Secret {secret['metadata']['name']}", e) from None
            except Exception as e:  # connection errors
                raise _failure(f"create Secret {secret['metadata']['name']}", e) from None
            dataplane.MADE.add(uid)
        if self.settings.network_policy_peers is not None:
            per_pod = max(g.ranks_per_replica for g in self.spec.workers)
            policy = dataplane.render_network_policy(self.owner, self.settings.pods.telemetry_port, per_pod,
                                                     list(self.settings.network_policy_peers))
            self._create("NetworkPolicy", lambda body: self.networking.create_namespaced_network_policy(ns, body, _preload_content=False), policy,
                         lambda name: self.networking.read_namespaced_network_policy(name, ns, _preload_content=False))

    def _token(self) -> str:
        return dataplane.token_for(self.settings.token_key, self.owner.uid)

    def _create(self, kind: str, call: Callable[[dict], Any], body: dict[str, Any], read: Callable[[str], Any]) -> dict[str, Any] | None:
        """Create; a 409 is fine when the object there is this job's (an earlier pass or a
        restarted operator made it), and waits when it is another owner's. Returns the
        object found on a 409 (None when this call made it)."""
        # Responses are not parsed into client models (``_preload_content=False``): nothing
        # uses them, and parsing thousands of pods costs the operator's CPU.
        name = body["metadata"]["name"]
        try:
            call(body)
            return None
        except ApiException as e:
            if e.status != 409:
                raise _failure(f"create {kind} {name}", e) from None
        except Exception as e:  # connection errors
            raise _failure(f"create {kind} {name}", e) from None
        try:
            there = json.loads(read(name).data)
        except Exception as e:  # gone again in between: the next pass creates it
            raise _failure(f"read {kind} {name} after a conflict", e) from None
        if (uid := podstatus.controller_uid(there.get("metadata") or {})) != self.owner.uid:
            raise ApiFailure(f"create {kind} {name}", 409, f"it exists and belongs to {f'owner uid {uid}' if uid else 'no controller'}, "
                             f"not to this TrainingJob (uid {self.owner.uid}); waiting for it to go")
        return there

    def _delete_budget(self, generation: int) -> None:
        """The PodDisruptionBudget of an ended generation (best effort: it selects no pod
        any more, and the job's deletion takes it with the rest)."""
        try:
            self.policy.delete_namespaced_pod_disruption_budget(render.pod_group_name(self.owner, generation), self.owner.namespace, _preload_content=False)
        except Exception:
            pass

    def _delete_pod(self, name: str, *, grace: int | None, quiet: bool = False) -> None:
        try:
            self.core.delete_namespaced_pod(name, self.owner.namespace, grace_period_seconds=grace, _preload_content=False)
            self.deleted.append(name)
        except ApiException as e:
            if e.status == 404:
                self.deleted.append(name)
                return
            if not quiet:
                raise _failure(f"delete Pod {name}", e) from None
        except Exception as e:
            if not quiet:
                raise _failure(f"delete Pod {name}", e) from None


def patch_status(api: client.ApiClient, namespace: str, name: str, old: dict[str, Any], new: dict[str, Any],
                 resource_version: str | None = None) -> str | None:
    """Merge-patch ``.status`` to ``new``; keys present in ``old`` but gone from ``new`` become
    null. With ``resource_version`` the write is conditional (optimistic concurrency): the
    server answers 409 when the object changed since that version, so a status computed from
    an older object never overwrites what another writer put there. Returns the object's
    new resourceVersion."""
    body: dict[str, Any] = {"status": {**{k: None for k in old if k not in new}, **new}}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    try:
        response = CustomObjectsApi(api).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, TrainingJob.PLURAL, name, body, _preload_content=False,
        )
    except Exception as e:
        raise _failure(f"patch TrainingJob {namespace}/{name} status", e) from None
    try:
        return json.loads(response.data)["metadata"]["resourceVersion"]
    except (ValueError, KeyError, TypeError):
        return None


def read_job(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """The TrainingJob as the server has it now (after a conflict); None when it is gone."""
    try:
        return json.loads(CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, TrainingJob.PLURAL, name, _preload_content=False).data)
    except ApiException as e:
        if e.status == 404:
            return None
        raise _failure(f"read TrainingJob {namespace}/{name}", e) from None
    except Exception as e:
        raise _failure(f"read TrainingJob {namespace}/{name}", e) from None


def delete_job(api: client.ApiClient, namespace: str, name: str) -> None:
    """ttlSecondsAfterFinished: the job and (by ownerReference) its children go."""
    try:
        CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, TrainingJob.PLURAL, name, _preload_content=False)
    except ApiException as e:
        if e.status != 404:
            raise _failure(f"delete TrainingJob {namespace}/{name}", e) from None
