"""Security under the chart (issue 23), on the local control plane:

- the ServiceAccounts the chart runs (the operator's, the workers') cannot list or watch
  Secrets anywhere, nor get one they did not make (a user's S3 keys, another app's Secret);
  the operator reads only its own: the webhook certificate and the telemetry token key;
- in namespaces enforcing the restricted Pod Security profile (and auditing and warning at
  it) the chart's operator and a TrainingJob's rank pods are admitted with no violation,
  and the job, with S3 keys from a Secret, runs to Complete;
- after that run no secret value (the S3 keys, the job's telemetry token, the token key,
  the operator's ServiceAccount token), nor its base64, is in the operator's logs, a rank's
  logs, the Events of either namespace, the TrainingJob (status, annotations), the pods'
  specs or the operator's /metrics.

Container logs are read where the process-backed nodes keep them (another cluster's
kubelets serve ``kubectl logs``).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from e2e.jobs import NS, OPERATOR_SA, SYSTEM, WORKER_SA, example, status, wait
from tests.support.s3 import REGION

pytestmark = pytest.mark.cluster
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
NAMESPACE_LABELS = RESTRICTED
JOB = "secure"
#: Keys of this run only (the test server accepts any pair): a hit is a leak, not a coincidence.
KEYS = {"AWS_ACCESS_KEY_ID": f"AKIA{secrets.token_hex(8).upper()}", "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)}
OPERATOR = f"system:serviceaccount:{SYSTEM}:{OPERATOR_SA}"
WORKER = f"system:serviceaccount:{NS}:{WORKER_SA}"
#: The operator's own Secrets in its namespace (chart names for release ``sw``).
OWN_SECRETS = (f"{OPERATOR_SA}-webhook-cert", f"{OPERATOR_SA}-token-key")
READS = ("get", "list", "watch", "*")


def can_i(cluster, user: str, *args: str) -> str:
    return cluster.kubectl("auth", "can-i", *args, f"--as={user}", check=False).stdout.strip()


def secret_rules(cluster, user: str, namespace: str) -> list[str]:
    """``kubectl auth can-i --list`` rows (resource, [non-resource URLs], [resource names],
    [verbs]) on Secrets that read without naming the Secret."""
    rows = cluster.kubectl("auth", "can-i", "--list", "-n", namespace, f"--as={user}").stdout.splitlines()[1:]
    found = []
    for row in rows:
        columns = re.findall(r"\[([^\]]*)\]", row)
        if len(columns) == 3 and row.split()[0] in ("secrets", "*", "*.*") and not columns[1].strip() \
                and set(columns[2].split()) & set(READS):
            found.append(row)
    return found


def test_the_charts_service_accounts_read_no_secret_they_do_not_need(cluster, installed):
    cluster.kubectl("-n", NS, "create", "secret", "generic", "s3-keys", *(f"--from-literal={k}={v}" for k, v in KEYS.items()))
    cluster.kubectl("-n", SYSTEM, "create", "secret", "generic", "other-app", "--from-literal=password=hunter2")
    try:
        for user in (OPERATOR, WORKER):
            for verb in ("list", "watch"):
                assert can_i(cluster, user, verb, "secrets", "--all-namespaces") == "no", (user, verb)
            for ns, name in ((NS, "s3-keys"), (SYSTEM, "other-app")):
                assert can_i(cluster, user, "get", f"secret/{name}", "-n", ns) == "no", (user, name)
                assert can_i(cluster, user, "get", "secrets", "-n", ns) == "no", (user, ns)
                assert not secret_rules(cluster, user, ns), (user, ns, secret_rules(cluster, user, ns))
                # And a real request as that ServiceAccount, impersonated, is refused.
                out = cluster.kubectl("-n", ns, "get", "secret", name, f"--as={user}", check=False)
                assert out.returncode != 0 and "forbidden" in out.stderr.lower(), (user, name, out.stdout[:200])
            out = cluster.kubectl("get", "secrets", "--all-namespaces", f"--as={user}", check=False)
            assert out.returncode != 0 and "forbidden" in out.stderr.lower(), (user, out.stdout[:200])
        # The workers make none; the operator makes its jobs' token Secrets and reads its own two.
        assert can_i(cluster, WORKER, "create", "secrets", "-n", NS) == "no"
        assert can_i(cluster, OPERATOR, "create", "secrets", "-n", NS) == "yes"
        for name in OWN_SECRETS:
            assert can_i(cluster, OPERATOR, "get", f"secret/{name}", "-n", SYSTEM) == "yes", name
        assert cluster.kubectl("-n", SYSTEM, "get", "secret", OWN_SECRETS[1], f"--as={OPERATOR}").returncode == 0
    finally:
        cluster.kubectl("-n", NS, "delete", "secret", "s3-keys", check=False)
        cluster.kubectl("-n", SYSTEM, "delete", "secret", "other-app", check=False)


def _state_dir(cluster) -> Path:
    return cluster.audit_log.parent.parent  # the local control plane's folder (logs/audit.log)


def _logs(cluster, ns: str, pod: str) -> str:
    """Every container's log of ``pod``."""
    if cluster.audit_log is None:
        return cluster.kubectl("-n", ns, "logs", pod, "--all-containers").stdout
    return "".join(p.read_text(errors="replace") for p in _state_dir(cluster).glob(f"*/pods/{ns}_{pod}_*/*.log"))


def _sa_tokens(cluster, ns: str, pod: str) -> list[str]:
    """The ServiceAccount tokens mounted into ``pod`` (projected ``token`` files)."""
    if cluster.audit_log is None:
        return [cluster.kubectl("-n", ns, "exec", pod, "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token").stdout]
    return [p.read_text() for p in _state_dir(cluster).glob(f"*/pods/{ns}_{pod}_*/**/token") if p.is_file()]


def _pss_findings(cluster, since: int) -> tuple[int, list[str]]:
    """The operator's pod creates in the audit log after byte ``since``: how many, and every
    one not judged under enforce-policy restricted or noted with a violation or exemption
    (PodSecurity's audit level writes violations there)."""
    creates, found = 0, []
    with cluster.audit_log.open(errors="replace") as f:
        f.seek(since)
        for line in f:
            if f'"{OPERATOR}"' not in line or '"pods"' not in line:
                continue
            event = json.loads(line)
            if event.get("stage") != "ResponseComplete" or event["verb"] != "create" or event["objectRef"].get("resource") != "pods":
                continue
            creates += 1
            notes, name = event.get("annotations") or {}, event["objectRef"].get("name")
            found += [f"{name}: {k}={v}" for k, v in notes.items() if "violations" in k or "exempt" in k]
            if not notes.get("pod-security.kubernetes.io/enforce-policy", "").startswith("restricted"):
                found.append(f"{name}: enforce-policy {notes.get('pod-security.kubernetes.io/enforce-policy')}")
    return creates, found


def _dry_run_admission(cluster, pod: dict) -> str:
    """Admit ``pod``'s spec again as a new pod (server dry-run): stderr holds any warning."""
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name[:50]}-pss", "namespace": ns}, "spec": pod["spec"]}
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(body), check=False)
    assert out.returncode == 0, f"{ns}/{name} refused: {out.stderr}"
    return out.stderr


def test_a_job_with_s3_keys_runs_restricted_and_no_secret_shows(cluster, installed, s3):
    for ns in (NS, SYSTEM):
        labels = cluster.json("get", "namespace", ns)["metadata"]["labels"]
        assert RESTRICTED.items() <= labels.items(), labels
    since = cluster.audit_log.stat().st_size if cluster.audit_log else 0
    cluster.kubectl("-n", NS, "create", "secret", "generic", "s3-keys", *(f"--from-literal={k}={v}" for k, v in KEYS.items()),
                    f"--from-literal=AWS_DEFAULT_REGION={REGION}")
    # 3,000 steps: on a quiet machine 300 finished before the first look at the status (CI, 2026-12-07).
    doc = yaml.safe_load(example(JOB, steps=3000))
    doc["spec"]["checkpoint"] = {"uri": s3.uri(JOB), "credentialsSecret": "s3-keys", "endpoint": s3.endpoint, "intervalSteps": 1000, "keep": 3}
    try:
        cluster.kubectl("-n", NS, "apply", "-f", "-", input=yaml.safe_dump(doc))
        # The operator's probes reach rank 0 with the job's token: the step moves in status.
        wait(lambda: (s := status(cluster, JOB)).get("phase") in ("Running", "Complete") and s.get("step", 0) > 0, 600, "a step in status")
        ranks = cluster.json("-n", NS, "get", "pods", "-l", f"shardwright.io/job={JOB}")["items"]
        operators = cluster.json("-n", SYSTEM, "get", "pods", "-l", "app.kubernetes.io/name=shardwright")["items"]
        assert ranks and operators
        for pod in ranks + operators:  # both restricted: any violation would be a warning here
            assert "Warning" not in _dry_run_admission(cluster, pod), pod["metadata"]["name"]
        metrics = ""
        for pod in operators:  # the Lease holder serves them; a standby refuses the connection
            try:
                with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/metrics", timeout=10) as response:
                    metrics += response.read().decode()
            except urllib.error.URLError:
                continue
        assert f'name="{JOB}"' in metrics, metrics[:2000]  # the job's series: what a leak would sit beside

        final = wait(lambda: (s := status(cluster, JOB)).get("phase") in ("Complete", "Failed") and s, 900, "a terminal phase")
        assert final["phase"] == "Complete" and final["lastCheckpoint"]["uri"].startswith(s3.uri(JOB)), final
        if cluster.audit_log:
            creates, findings = _pss_findings(cluster, since)
            assert creates >= len(ranks) and not findings, (creates, findings)

        job = cluster.json("-n", NS, "get", "tj", JOB)
        owned = [s for s in cluster.json("-n", NS, "get", "secrets")["items"]
                 if any(o["uid"] == job["metadata"]["uid"] for o in s["metadata"].get("ownerReferences") or [])]
        assert owned, "the job's telemetry token Secret"
        values = {**KEYS,
                  **{f"telemetry token {s['metadata']['name']}": base64.b64decode(v).decode() for s in owned for v in s["data"].values()}}
        key = cluster.json("-n", SYSTEM, "get", "secret", OWN_SECRETS[1])
        values |= {f"token key {k}": v for k, v in key["data"].items()}  # already base64
        operator_pods = [p["metadata"]["name"] for p in operators]
        tokens = [t for name in operator_pods for t in _sa_tokens(cluster, SYSTEM, name)]
        assert tokens, "the operator's ServiceAccount token"
        values |= {f"operator ServiceAccount token {i}": t.strip() for i, t in enumerate(tokens)}
        needles = {**values, **{f"{what} (base64)": base64.b64encode(v.encode()).decode() for what, v in values.items()}}
        assert all(len(v) >= 16 for v in needles.values())

        pods = {**{f"{NS}/{p['metadata']['name']}": p for p in cluster.json("-n", NS, "get", "pods")["items"]},
                **{f"{SYSTEM}/{p['metadata']['name']}": p for p in cluster.json("-n", SYSTEM, "get", "pods")["items"]}}
        places = {
            "TrainingJob (status, annotations)": json.dumps(job),
            "Events": json.dumps([cluster.json("-n", ns, "get", "events")["items"] for ns in (NS, SYSTEM)]),
            "operator /metrics": metrics,
            **{f"logs of {SYSTEM}/{name}": _logs(cluster, SYSTEM, name) for name in operator_pods},
            **{f"logs of {NS}/{p['metadata']['name']}": _logs(cluster, NS, p["metadata"]["name"]) for p in ranks},
            **{f"spec of {where}": json.dumps(p["spec"]) for where, p in pods.items()},
        }
        assert all(places[f"logs of {SYSTEM}/{name}"] for name in operator_pods), "the operator's logs were read"
        assert any(places[f"logs of {NS}/{p['metadata']['name']}"] for p in ranks), "the ranks' logs were read"
        leaks = [f"{what} in {where}" for where, text in places.items() for what, value in needles.items() if value in text]
        assert not leaks, leaks
    finally:
        cluster.kubectl("-n", NS, "delete", "tj", JOB, "--timeout=120s", check=False)
        cluster.kubectl("-n", NS, "delete", "secret", "s3-keys", check=False)
