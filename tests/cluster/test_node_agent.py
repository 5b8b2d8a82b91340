"""Process-backed nodes do what a kubelet does for the operator's pods: they run the
command, give the pod its own network namespace and IP, env, volumes, token and hostname,
report real exit codes and termination messages, and honour the grace period on deletion."""

from __future__ import annotations

import ipaddress
import json
import textwrap

import pytest

from tests.support.cluster import apply, get_json, wait_for

pytestmark = pytest.mark.cluster


def pod(namespace: str, name: str, script: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5, **spec,
                     "containers": [{"name": "main", "image": "shardwright:dev", "command": ["python", "-c", textwrap.dedent(script)],
                                     "env": [{"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                             {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                             {"name": "GREETING", "value": "hello $(MY_POD)"}]}]}}


def phase(kube, ns: str, name: str) -> str:
    return get_json(kube, "-n", ns, "get", "pod", name).get("status", {}).get("phase", "")


def terminated(kube, ns: str, name: str) -> dict:
    status = get_json(kube, "-n", ns, "get", "pod", name)["status"]
    return status["containerStatuses"][0]["state"]["terminated"]


def test_a_pod_runs_with_its_env_ip_hostname_and_token_and_exits_with_its_code(kube, namespace, process_nodes):
    script = """
        import json, os, socket, ssl, urllib.request
        base = "/var/run/secrets/kubernetes.io/serviceaccount"
        token = open(f"{base}/token").read()
        ctx = ssl.create_default_context(cafile=f"{base}/ca.crt")
        url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}/apis/authentication.k8s.io/v1/selfsubjectreviews"
        req = urllib.request.Request(url, data=b'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}',
                                     headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        who = json.load(urllib.request.urlopen(req, context=ctx))["status"]["userInfo"]["username"]
        open("/dev/termination-log", "w").write(json.dumps({"who": who, "env": os.environ["GREETING"], "ip": os.environ["MY_IP"],
            "host": socket.gethostname(), "ns": open(f"{base}/namespace").read()}))
        raise SystemExit(3)
    """
    apply(kube, pod(namespace, "probe", script))
    wait_for(lambda: phase(kube, namespace, "probe") == "Failed", 60, "pod Failed")
    state = terminated(kube, namespace, "probe")
    assert state["exitCode"] == 3 and state["reason"] == "Error"
    facts = json.loads(state["message"])
    body = get_json(kube, "-n", namespace, "get", "pod", "probe")
    assert body["spec"]["nodeName"] in process_nodes  # bound by the real scheduler
    assert facts["who"] == f"system:serviceaccount:{namespace}:default"  # a bound token, verified by the API server
    assert facts["env"] == "hello probe" and facts["ns"] == namespace and facts["host"] == "probe"
    assert facts["ip"] == body["status"]["podIP"] and ipaddress.ip_address(facts["ip"]) in ipaddress.ip_network("10.240.0.0/12")


def test_pods_reach_each_other_by_their_headless_service_names(kube, namespace, process_nodes):
    server = """
        import http.server
        http.server.HTTPServer(("0.0.0.0", 8000), http.server.SimpleHTTPRequestHandler).serve_forever()
    """
    apply(kube, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": namespace},
                 "spec": {"clusterIP": "None", "selector": {"app": "server"}, "ports": [{"port": 8000}]}})
    apply(kube, pod(namespace, "server", server, hostname="server", subdomain="svc", restartPolicy="Always"))
    client = f"""
        import time, urllib.request
        for _ in range(100):
            try:
                urllib.request.urlopen("http://server.svc.{namespace}.svc:8000/", timeout=2); break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit(1)
    """
    apply(kube, pod(namespace, "client", client))
    wait_for(lambda: phase(kube, namespace, "client") == "Succeeded", 60, "client reached the server")
    assert terminated(kube, namespace, "client")["exitCode"] == 0
    ready = get_json(kube, "-n", namespace, "get", "pod", "server")["status"]["conditions"]
    assert {"type": "Ready", "status": "True"}.items() <= next(c for c in ready if c["type"] == "Ready").items()


def test_deletion_sends_sigterm_and_waits_for_the_process(kube, namespace, process_nodes):
    script = """
        import signal, sys, time
        def bye(*_):
            time.sleep(5.0)  # still Terminating: the pod object stays until this returns
            open("/dev/termination-log", "w").write("got SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        while True:
            time.sleep(0.1)
    """
    apply(kube, pod(namespace, "sleeper", script, restartPolicy="Always"))
    wait_for(lambda: phase(kube, namespace, "sleeper") == "Running", 60, "Running")
    kube.kubectl("-n", namespace, "delete", "pod", "sleeper", "--wait=false")
    body = get_json(kube, "-n", namespace, "get", "pod", "sleeper")
    assert body["metadata"].get("deletionTimestamp")  # graceful: the object waits for the kubelet
    wait_for(lambda: kube.kubectl("-n", namespace, "get", "pod", "sleeper", check=False).returncode != 0, 30, "pod removed by the agent")
