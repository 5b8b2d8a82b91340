"""Ingress NetworkPolicy on process-backed nodes, as a CNI with policy support enforces it.

A pod that no NetworkPolicy of its namespace selects for Ingress takes all traffic. A pod
one or more select takes only what the union of their ingress rules allows: sources from
the rules' ``from`` peers (``podSelector`` in the policy's namespace, ``namespaceSelector``
alone or with a ``podSelector``, ``ipBlock`` cidr minus ``except``; none: any source) on
their ``ports`` (protocol, number or the pod's named container port, ``endPort``; none: any).
Always allowed, as Kubernetes specifies and Calico and Cilium do: replies to the pod's own
connections (conntrack), loopback, and the node itself (this machine, at the bridge's
address: the agent's readiness probes, as a kubelet's; pods cannot block their resident
node). Other packets are dropped, so a refused peer's connect times out, as with Calico.

Each pod's rules are an nftables table in its own network namespace (``input`` hook),
replaced atomically when policies, namespaces or pods (labels, IPs) change.

Not enforced: egress (a policy's Egress part changes nothing here), IPv6 (pods have none).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import subprocess
from collections.abc import Iterable
from typing import Any

from kubernetes import client

from .podspec import read_json
from .podstate import Pod

log = logging.getLogger("nodeagent.netpolicy")
TABLE = "shardwright"


@dataclasses.dataclass(frozen=True)
class Peer:
    """A pod as a policy's ``from`` sees it."""

    namespace: str
    labels: dict[str, str]
    ip: str


@dataclasses.dataclass(frozen=True)
class Source:
    """Addresses a rule admits: ``cidr`` minus ``excepted``."""

    cidr: str
    excepted: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Port:
    """A destination port range of one protocol (``first`` None: every port)."""

    protocol: str
    first: int | None = None
    last: int | None = None


@dataclasses.dataclass(frozen=True)
class Rule:
    """One ingress rule, resolved: None means any source, any port."""

    sources: tuple[Source, ...] | None
    ports: tuple[Port, ...] | None


# ----------------------------------------------------------------------------- which traffic


def matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (``matchLabels`` and ``matchExpressions``) against labels; {} selects all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, values, op = e["key"], e.get("values") or [], e["operator"]
        present = key in labels
        if not {"In": present and labels[key] in values, "NotIn": not present or labels[key] not in values,
                "Exists": present, "DoesNotExist": not present}[op]:
            return False
    return True


def isolates_ingress(policy: dict[str, Any]) -> bool:
    """Whether the policy governs ingress: ``policyTypes`` names it, or (omitted) always."""
    return "Ingress" in (policy["spec"].get("policyTypes") or ["Ingress"])


def ingress(pod: dict[str, Any], policies: Iterable[dict[str, Any]], namespaces: dict[str, dict[str, str]],
            peers: Iterable[Peer]) -> tuple[Rule, ...] | None:
    """What may reach ``pod``: None when no policy selects it for ingress (everything), else
    the rules of every policy that does (none: nothing but what is always allowed)."""
    ns, labels = pod["metadata"]["namespace"], pod["metadata"].get("labels") or {}
    selecting = [p for p in policies if p["metadata"]["namespace"] == ns and isolates_ingress(p)
                 and matches(p["spec"].get("podSelector"), labels)]
    if not selecting:
        return None
    peers = list(peers)
    rules = []
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            sources = _sources(rule.get("from"), policy["metadata"]["namespace"], namespaces, peers)
            ports = _ports(rule.get("ports"), pod)
            if sources != () and ports != ():  # a rule that admits nobody, or no port, adds nothing
                rules.append(Rule(sources, ports))
    return tuple(rules)


def _sources(peers_of: list[dict[str, Any]] | None, ns: str, namespaces: dict[str, dict[str, str]],
             peers: list[Peer]) -> tuple[Source, ...] | None:
    if not peers_of:
        return None
    out: set[Source] = set()
    for peer in peers_of:
        if (block := peer.get("ipBlock")) is not None:
            if ipaddress.ip_network(block["cidr"], strict=False).version == 4:
                out.add(Source(block["cidr"], tuple(sorted(block.get("except") or ()))))
            continue
        if "namespaceSelector" in peer:
            allowed = {n for n, ns_labels in namespaces.items() if matches(peer["namespaceSelector"], ns_labels)}
        else:
            allowed = {ns}
        out |= {Source(f"{p.ip}/32") for p in peers if p.namespace in allowed and matches(peer.get("podSelector"), p.labels)}
    return tuple(sorted(out, key=lambda s: (s.cidr, s.excepted)))


def _ports(ports: list[dict[str, Any]] | None, pod: dict[str, Any]) -> tuple[Port, ...] | None:
    if not ports:
        return None
    out: list[Port] = []
    for p in ports:
        protocol = (p.get("protocol") or "TCP").lower()
        port = p.get("port")
        if port is None:
            out.append(Port(protocol))
        elif isinstance(port, int) or str(port).isdigit():
            out.append(Port(protocol, int(port), p.get("endPort") or int(port)))
        else:  # a named port: the pod's container ports of that name and protocol
            out += [Port(protocol, c["containerPort"], c["containerPort"]) for container in pod["spec"].get("containers") or []
                    for c in container.get("ports") or [] if c.get("name") == port and (c.get("protocol") or "TCP").lower() == protocol]
    return tuple(out)


# ----------------------------------------------------------------------------- as nftables


def ruleset(rules: tuple[Rule, ...] | None, node_ips: tuple[str, ...]) -> str:
    """``nft -f`` input that replaces the pod's table with ``rules`` (None: removes it)."""
    text = f"table inet {TABLE}\ndelete table inet {TABLE}\n"
    if rules is None:
        return text
    lines = ["ct state established,related accept", "iif lo accept", f"ip saddr {_set(node_ips)} accept"]
    for rule in rules:
        for source in _source_matches(rule.sources):
            for port in _port_matches(rule.ports):
                lines.append(" ".join(filter(None, (source, port, "accept"))))
    body = "".join(f"    {line}\n" for line in lines)
    return text + f"table inet {TABLE} {{\n  chain ingress {{\n    type filter hook input priority filter; policy drop;\n{body}  }}\n}}\n"


def _set(cidrs: Iterable[str]) -> str:
    """An nft set of addresses, overlaps merged (nft refuses overlapping intervals)."""
    merged = ipaddress.collapse_addresses(ipaddress.ip_network(c, strict=False) for c in cidrs)
    return "{ " + ", ".join(str(n) for n in merged) + " }"


def _source_matches(sources: tuple[Source, ...] | None) -> list[str]:
    if sources is None:
        return [""]
    plain = [s.cidr for s in sources if not s.excepted]
    out = [f"ip saddr {_set(plain)}"] if plain else []
    return out + [f"ip saddr {_set([s.cidr])} ip saddr != {_set(s.excepted)}" for s in sources if s.excepted]


def _port_matches(ports: tuple[Port, ...] | None) -> list[str]:
    if ports is None:
        return [""]
    return [f"meta l4proto {p.protocol}" + ("" if p.first is None else f" th dport {p.first}" + (f"-{p.last}" if p.last != p.first else ""))
            for p in ports]


# ----------------------------------------------------------------------------- keeping them current


def read(api: client.ApiClient) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """Every NetworkPolicy of the cluster, and every namespace's labels."""
    policies = read_json(client.NetworkingV1Api(api).list_network_policy_for_all_namespaces(
        _preload_content=False, _request_timeout=10))["items"]
    namespaces = read_json(client.CoreV1Api(api).list_namespace(_preload_content=False, _request_timeout=10))["items"]
    return policies, {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in namespaces}


class Enforcer:
    """Keeps the nft table of every pod this agent runs equal to what the policies allow it."""

    def __init__(self, node_ips: tuple[str, ...]) -> None:
        self.node_ips = node_ips
        #: Every pod of the cluster (the peers policies name), by uid.
        self.pods: dict[str, dict[str, Any]] = {}
        self.policies: list[dict[str, Any]] = []
        self.namespaces: dict[str, dict[str, str]] = {}
        #: The ruleset last applied in each pod's namespace (netns path -> nft text).
        self.applied: dict[str, str] = {}
        self.dirty = True

    def observe_pods(self, kind: str, obj: Any) -> None:
        """A pod watch event (``LIST`` carries every pod)."""
        if kind == "LIST":
            self.pods = {p["metadata"]["uid"]: p for p in obj}
        elif kind == "DELETED":
            self.pods.pop(obj["metadata"]["uid"], None)
        else:
            self.pods[obj["metadata"]["uid"]] = obj
        self.dirty = True

    def observe_cluster(self, policies: list[dict[str, Any]], namespaces: dict[str, dict[str, str]]) -> None:
        self.policies, self.namespaces, self.dirty = policies, namespaces, True

    def sync(self, local: Iterable[Pod]) -> None:
        """Apply each local pod's ruleset where it changed (a failed one is tried again on the
        next change)."""
        if not self.dirty:
            return
        self.dirty = False
        local = list(local)
        # A pod this agent runs has its IP before the API server has it in its status.
        ips = {p.uid: p.ip for p in local}
        peers = [Peer(b["metadata"]["namespace"], b["metadata"].get("labels") or {}, ip) for uid, b in self.pods.items()
                 if (ip := ips.get(uid) or (b.get("status") or {}).get("podIP"))]
        self.applied = {p.netns: self.applied[p.netns] for p in local if p.netns in self.applied}
        for pod in local:
            text = ruleset(ingress(pod.body, self.policies, self.namespaces, peers), self.node_ips)
            if self.applied.get(pod.netns, ruleset(None, ())) == text:
                continue
            try:
                subprocess.run(["nsenter", f"--net={pod.netns}", "--", "nft", "-f", "-"], input=text,
                               capture_output=True, text=True, timeout=10, check=True)
            except (OSError, subprocess.SubprocessError) as e:
                log.warning(f"network policy of pod {pod.key}: {e} {getattr(e, 'stderr', '') or ''}".strip())
                continue
            self.applied[pod.netns] = text
            log.info(f"pod {pod.key[0]}/{pod.key[1]}: ingress {'open' if text == ruleset(None, ()) else 'limited by policy'}")
