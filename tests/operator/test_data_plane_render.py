"""The data plane's objects as rendered (dataplane.py, pods.py): the token Secret, the token in
every rank pod's env by reference only, the per-job NetworkPolicy, the ``--network-policy``
flag's checks and the operator's memory of tokens. On the API server: test_data_plane.py."""

from __future__ import annotations

import json

import pytest
import yaml

from shardwright.operator.api import validate
from shardwright.operator.backends import dataplane, raypods
from shardwright.operator.backends import pods as render
from shardwright.workers.config import TOKEN_ENV
from tests.operator.test_pods import ROOT, start_action

OWNER = render.Owner("tiny", "team-a", "uid-1")


def test_the_token_secret_is_owned_immutable_and_holds_32_random_bytes():
    token = dataplane.new_token()
    assert len(token) == 43 and token != dataplane.new_token()
    secret = dataplane.render_secret(OWNER, token)
    assert secret["metadata"]["name"] == "tiny-telemetry" and secret["metadata"]["namespace"] == "team-a"
    assert secret["metadata"]["ownerReferences"] == [OWNER.reference()] and secret["immutable"] is True
    assert token not in json.dumps(secret)  # base64 in data, as the API server keeps it
    assert dataplane.token_in(secret) == token and dataplane.token_in({"data": {}}) is None


@pytest.mark.parametrize("runtime", ["torch", "ray"])
def test_every_pod_reads_the_token_from_the_secret_never_as_a_value(runtime):
    job, action = start_action()
    groups = {g.name: g for g in job.spec.workers}
    rendering = raypods.render_pods if runtime == "ray" else render.render_pods
    pods = rendering(OWNER, action, groups, render.PodSettings())
    for pod in pods:
        (entry,) = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == TOKEN_ENV]
        assert entry == {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": "tiny-telemetry", "key": "token"}}}


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


def test_tokens_are_remembered_least_recently_used_first_out():
    tokens = dataplane.Tokens(size=2)
    tokens.put("a", "ta")
    tokens.put("b", "tb")
    assert tokens.get("a") == "ta"  # a is now the most recent
    tokens.put("c", "tc")
    assert (tokens.get("a"), tokens.get("b"), tokens.get("c")) == ("ta", None, "tc")
