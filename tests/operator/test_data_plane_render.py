"""The data plane's objects as rendered (dataplane.py, pods.py): the token Secret, the token in
every rank pod's env by reference only, the per-job NetworkPolicy, the ``--network-policy``
flag's checks and the operator's memory of the Secrets it made. On the API server: test_data_plane.py."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from shardwright.operator import tokenkey
from shardwright.operator.api import validate
from shardwright.operator.backends import dataplane, raypods
from shardwright.operator.backends import pods as render
from shardwright.workers.config import TOKEN_ENV
from tests.operator.test_pods import ROOT, start_action

OWNER = render.Owner("tiny", "team-a", "uid-1")


def test_the_token_secret_is_owned_immutable_named_for_the_uid_and_holds_the_keyed_token():
    key = b"k" * 32
    token = dataplane.token_for(key, OWNER.uid)
    # 32 bytes as URL-safe base64, the same for a uid and key, another for another uid or key.
    assert len(token) == 43 and token == dataplane.token_for(key, OWNER.uid)
    assert token not in (dataplane.token_for(key, "uid-2"), dataplane.token_for(b"j" * 32, OWNER.uid))
    secret = dataplane.render_secret(OWNER, token)
    assert secret["metadata"]["name"] == "tiny-telemetry-uid-1" and secret["metadata"]["namespace"] == "team-a"
    assert secret["metadata"]["ownerReferences"] == [OWNER.reference()] and secret["immutable"] is True
    assert token not in json.dumps(secret)  # base64 in data, as the API server keeps it
    assert base64.b64decode(secret["data"]["token"]).decode() == token


@pytest.mark.parametrize("runtime", ["torch", "ray"])
def test_every_pod_reads_the_token_from_the_secret_never_as_a_value(runtime):
    job, action = start_action()
    groups = {g.name: g for g in job.spec.workers}
    rendering = raypods.render_pods if runtime == "ray" else render.render_pods
    pods = rendering(OWNER, action, groups, render.PodSettings())
    for pod in pods:
        (entry,) = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == TOKEN_ENV]
        assert entry == {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": "tiny-telemetry-uid-1", "key": "token"}}}


def test_a_template_may_not_set_the_token():
    doc = yaml.safe_load((ROOT / "examples" / "tiny-train.yaml").read_text())
    doc["spec"]["workers"][0]["template"] = {"spec": {"containers": [{"name": "ranks", "env": [{"name": TOKEN_ENV, "value": "mine"}]}]}}
    _, problems = validate(doc)
    assert any(p.path == "spec.workers[0].template.spec.containers[0].env[0].name" and TOKEN_ENV in p.message for p in problems), problems


PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


@pytest.mark.parametrize("ranks_per_pod, ports", [(1, {"protocol": "TCP", "port": 9400}),
                                                  (4, {"protocol": "TCP", "port": 9400, "endPort": 9403})], ids=["one-rank", "four-ranks"])
def test_the_policy_admits_the_jobs_pods_everywhere_and_peers_on_the_telemetry_ports(ranks_per_pod, ports):
    policy = dataplane.render_network_policy(OWNER, 9400, ranks_per_pod, [PROMETHEUS])
    assert policy["metadata"]["name"] == "tiny-ranks" and policy["metadata"]["ownerReferences"] == [OWNER.reference()]
    job = {"matchLabels": {render.LABEL_JOB: "tiny"}}
    assert policy["spec"] == {"podSelector": job, "policyTypes": ["Ingress"],
                              "ingress": [{"from": [{"podSelector": job}]}, {"from": [PROMETHEUS], "ports": [ports]}]}


def test_no_peers_admits_the_jobs_pods_only():
    """A rule without ``from`` would admit every source: with no peers there is none."""
    assert dataplane.render_network_policy(OWNER, 9400, 1, [])["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {render.LABEL_JOB: "tiny"}}}]}]


@pytest.mark.parametrize("text, message", [
    ("{nope", "--network-policy: not JSON"),
    ('{"podSelector": {}}', "expected a JSON list of NetworkPolicyPeers, got dict"),
    ('[{"podSelector": {}}, {"pods": {}}]', "--network-policy[1]: a NetworkPolicyPeer is an object with ipBlock, namespaceSelector, podSelector"),
    ("[{}]", "--network-policy[0]"),
    ('["prometheus"]', "--network-policy[0]"),
], ids=["not-json", "not-a-list", "unknown-field", "empty-peer", "not-an-object"])
def test_the_flag_refuses_what_is_no_list_of_peers(text, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dataplane.parse_peers(text)


def test_the_flag_takes_a_list_of_peers():
    assert dataplane.parse_peers(json.dumps([PROMETHEUS])) == (PROMETHEUS,) and dataplane.parse_peers("[]") == ()


def test_made_secrets_are_remembered_least_recently_used_first_out():
    made = dataplane.Made(size=2)
    made.add("a")
    made.add("b")
    assert "a" in made  # a is now the most recent
    made.add("c")
    assert ("a" in made, "b" in made, "c" in made) == (True, False, True)


def test_the_token_key_secret_flag_names_namespace_and_name():
    assert tokenkey.parse("shardwright-system/sw-shardwright-token-key") == ("shardwright-system", "sw-shardwright-token-key")
    for bad in ("sw-shardwright-token-key", "/name", "ns/", "a/b/c"):
        with pytest.raises(ValueError, match="--token-key-secret: expected NAMESPACE/NAME"):
            tokenkey.parse(bad)
