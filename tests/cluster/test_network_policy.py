"""Process-backed nodes enforce ingress NetworkPolicy as a CNI with policy support does
(e2e/cluster/netpolicy.py): which peers and ports a pod's policies admit, and on the local
control plane, a pod's server reachable or not from other pods as policies come and go."""

from __future__ import annotations

import socket
import textwrap
import urllib.request

import pytest

from e2e.cluster import netpolicy
from e2e.cluster.netpolicy import Peer, Port, Rule, Source
from tests.support.cluster import apply, get_json, wait_for

SERVER = {"metadata": {"namespace": "a", "labels": {"app": "server", "tier": "db"}},
          "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000},
                                             {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]}}
PEERS = [Peer("a", {"role": "x"}, "10.240.1.2"), Peer("a", {"role": "y"}, "10.240.1.3"),
         Peer("b", {"role": "x"}, "10.240.1.4"), Peer("c", {"role": "x"}, "10.240.1.5")]
NAMESPACES = {"a": {"team": "red"}, "b": {"team": "red"}, "c": {"team": "blue"}}


def policy(spec: dict, namespace: str = "a") -> dict:
    return {"metadata": {"namespace": namespace, "name": "p"}, "spec": {"podSelector": {}, **spec}}


def rules(*specs: dict) -> tuple[Rule, ...] | None:
    return netpolicy.ingress(SERVER, [policy(s) for s in specs], NAMESPACES, PEERS)


def test_a_pod_no_ingress_policy_selects_takes_everything():
    assert rules() is None
    assert netpolicy.ingress(SERVER, [policy({}, namespace="b")], NAMESPACES, PEERS) is None  # another namespace's
    assert rules({"podSelector": {"matchLabels": {"app": "other"}}}) is None
    assert rules({"policyTypes": ["Egress"]}) is None
    assert rules({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}}) is None


def test_a_selecting_policy_without_rules_denies_all_and_rules_add_up():
    assert rules({}) == ()  # policyTypes omitted: Ingress
    assert rules({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, "policyTypes": ["Ingress"]}) == ()
    assert rules({}, {"ingress": [{}]}) == (Rule(None, None),)  # the union: one empty rule admits everything


def test_peers_by_pod_selector_namespace_selector_and_ip_block():
    x = {"podSelector": {"matchLabels": {"role": "x"}}}
    assert rules({"ingress": [{"from": [x]}]}) == (Rule((Source("10.240.1.2/32"),), None),)  # its own namespace only
    red = {"namespaceSelector": {"matchLabels": {"team": "red"}}}
    assert rules({"ingress": [{"from": [{**red, **x}]}]}) == (Rule((Source("10.240.1.2/32"), Source("10.240.1.4/32")), None),)
    assert len(rules({"ingress": [{"from": [red]}]})[0].sources) == 3  # every pod of a and b
    block = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.240.0.0/16"]}}
    assert rules({"ingress": [{"from": [block]}]}) == (Rule((Source("10.0.0.0/8", ("10.240.0.0/16",)),), None),)
    # A rule whose peers match no pod admits nobody.
    assert rules({"ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "z"}}}]}]}) == ()


def test_ports_by_number_range_protocol_and_name():
    def ports(*entries: dict):
        return rules({"ingress": [{"ports": list(entries)}]})[0].ports

    assert ports({"port": 8000}) == (Port("tcp", 8000, 8000),)
    assert ports({"port": 9000, "endPort": 9100, "protocol": "UDP"}) == (Port("udp", 9000, 9100),)
    assert ports({"port": "http"}, {"port": "dns", "protocol": "UDP"}) == (Port("tcp", 8000, 8000), Port("udp", 53, 53))
    assert ports({"protocol": "SCTP"}) == (Port("sctp"),)
    assert rules({"ingress": [{"ports": [{"port": "dns"}]}]}) == ()  # no TCP port of that name: no port at all


def test_the_ruleset_drops_by_default_and_always_admits_replies_loopback_and_the_node():
    text = netpolicy.ruleset((Rule((Source("10.240.1.2/32"), Source("10.240.1.3/32")), (Port("tcp", 8000, 8000),)),
                              Rule((Source("10.0.0.0/8", ("10.240.0.0/16",)),), None)), ("10.240.0.1",))
    assert "policy drop;" in text and text.startswith("table inet shardwright\ndelete table inet shardwright\n")
    lines = [line.strip() for line in text.splitlines()]
    assert lines[lines.index("ct state established,related accept"):][:6] == [
        "ct state established,related accept", "iif lo accept", "ip saddr { 10.240.0.1/32 } accept",
        "ip saddr { 10.240.1.2/31 } meta l4proto tcp th dport 8000 accept",
        "ip saddr { 10.0.0.0/8 } ip saddr != { 10.240.0.0/16 } accept", "}"]
    assert netpolicy.ruleset(None, ("10.240.0.1",)) == "table inet shardwright\ndelete table inet shardwright\n"


# ----------------------------------------------------------------------------- on the control plane

SERVE = """
    import os, socket, threading
    def serve(port):
        s = socket.create_server((os.environ["MY_IP"], port))
        while True:
            c, _ = s.accept(); c.sendall(b"hi"); c.close()
    threading.Thread(target=serve, args=(8001,), daemon=True).start()
    serve(8000)
"""
# Asked over HTTP by the test: "/<ip>/<port>" answers whether this pod connects there.
DIAL = """
    import http.server, os, socket
    class Dial(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ip, port = self.path.strip("/").split("/")
            try:
                socket.create_connection((ip, int(port)), timeout=1).close(); answer = b"ok"
            except OSError:
                answer = b"no"
            self.send_response(200); self.end_headers(); self.wfile.write(answer)
    http.server.HTTPServer((os.environ["MY_IP"], 8080), Dial).serve_forever()
"""


def pod(namespace: str, name: str, script: str, labels: dict[str, str], ports: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": "shardwright:dev", "command": ["python", "-c", textwrap.dedent(script)], "ports": ports,
                "env": [{"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "readinessProbe": {"tcpSocket": {"port": ports[0]["containerPort"]}, "periodSeconds": 1}}]}}


def connects(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.cluster
def test_ingress_policies_decide_which_pods_reach_a_server(kube, namespace, process_nodes):
    apply(kube, pod(namespace, "server", SERVE, {"app": "server"}, [{"name": "http", "containerPort": 8000}]))
    for name, labels in (("dial-x", {"role": "x"}), ("dial-y", {"role": "y"})):
        apply(kube, pod(namespace, name, DIAL, labels, [{"containerPort": 8080}]))

    def ip(name: str) -> str:
        return wait_for(lambda: (s := get_json(kube, "-n", namespace, "get", "pod", name)["status"]).get("phase") == "Running"
                        and any(c["type"] == "Ready" and c["status"] == "True" for c in s["conditions"]) and s["podIP"], 60, f"{name} Ready")

    server, x, y = ip("server"), ip("dial-x"), ip("dial-y")

    def reach(port: int = 8000) -> dict[str, bool]:
        """Who connects to the server now: each dialling pod, and this machine (the node)."""
        def dial(pod_ip: str) -> bool:
            return urllib.request.urlopen(f"http://{pod_ip}:8080/{server}/{port}", timeout=10).read() == b"ok"
        return {"x": dial(x), "y": dial(y), "node": connects(server, port)}

    assert reach() == {"x": True, "y": True, "node": True}  # no policy: everyone
    deny = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "only-x", "namespace": namespace},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]}}
    apply(kube, deny)
    # Denied pods time out; the node (the agent's readiness probes) is never cut off, as on Kubernetes.
    assert wait_for(lambda: (r := reach()) == {"x": False, "y": False, "node": True} and r, 30, "deny-all in effect")
    assert any(c["type"] == "Ready" and c["status"] == "True"
               for c in get_json(kube, "-n", namespace, "get", "pod", "server")["status"]["conditions"])
    deny["spec"]["ingress"] = [{"from": [{"podSelector": {"matchLabels": {"role": "x"}}}], "ports": [{"port": "http"}]}]
    apply(kube, deny)
    assert wait_for(lambda: (r := reach()) == {"x": True, "y": False, "node": True} and r, 30, "role=x admitted on port http")
    assert reach(8001) == {"x": False, "y": False, "node": True}  # only the named port
    kube.kubectl("-n", namespace, "delete", "networkpolicy", "only-x")
    assert wait_for(lambda: (r := reach()) == {"x": True, "y": True, "node": True} and r, 30, "the policy gone: everyone again")
    assert reach(8001)["y"]
