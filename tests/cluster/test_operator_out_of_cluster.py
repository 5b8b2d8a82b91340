"""``shardwright operator`` started as a user starts it from a laptop: a kubeconfig pointing
at a cluster, no /certs. It reconciles (the webhook off, said in one line); asked for a
webhook without a certificate it exits 2 with one line, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cluster import get_json, wait_for

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
SHARDWRIGHT = [sys.executable, "-m", "shardwright.operator.cli"]


def test_webhook_on_without_a_certificate_is_one_clear_line(kube, tmp_path):
    out = subprocess.run([*SHARDWRIGHT, "operator", "--webhook=on", f"--webhook-cert-dir={tmp_path}"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)})
    assert out.returncode == 2
    assert out.stderr.strip() == (f"shardwright operator: webhook certificate not found: {tmp_path}/tls.crt and {tmp_path}/tls.key; "
                                  "pass --webhook-secret, --webhook-cert-dir, or --webhook=off")


def test_out_of_cluster_with_a_kubeconfig_it_reconciles_without_a_webhook(kube, namespace, tmp_path):
    log = tmp_path / "operator.log"
    with open(log, "w") as sink:
        operator = subprocess.Popen(
            [*SHARDWRIGHT, "operator", "--metrics-port=0", "--health-port=0", "--bind-address=127.0.0.1", f"--webhook-cert-dir={tmp_path / 'none'}",
             f"--namespace={namespace}"],
            stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)}, start_new_session=True)
    try:
        kube.kubectl("-n", namespace, "apply", "-f", str(ROOT / "examples" / "tiny-train.yaml"))
        job = get_json(kube, "-n", namespace, "get", "tj", "tiny-train")
        pods = wait_for(lambda: len(items := get_json(kube, "-n", namespace, "get", "pods")["items"]) == 2 and items, 60, "2 pods")
        for pod in pods:
            owner = pod["metadata"]["ownerReferences"][0]
            assert owner["uid"] == job["metadata"]["uid"] and owner["controller"] is True
        wait_for(lambda: get_json(kube, "-n", namespace, "get", "tj", "tiny-train").get("status", {}).get("generation") == 1,
                 60, "status.generation 1")
        kube.kubectl("-n", namespace, "delete", "tj", "tiny-train", "--timeout=60s")
    finally:
        operator.send_signal(signal.SIGTERM)
        operator.wait(timeout=60)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert f"Admission webhook off: no tls.crt and tls.key in {tmp_path / 'none'}" in text
