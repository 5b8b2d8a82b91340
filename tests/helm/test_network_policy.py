"""The chart's NetworkPolicies (networkPolicy.enabled): the operator's own, valid and strict,
and the peers it hands the operator for every job's policy (``--network-policy``)."""

from __future__ import annotations

import json

import pytest

from tests.helm.test_chart import K8S_VERSION, by_kind, kubernetes_validate, render

PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
OPERATOR = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shardwright-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "shardwright", "app.kubernetes.io/instance": "sw"}}}


def network_policy_flag(objects: list[dict]) -> list[str]:
    (deployment,) = by_kind(objects, "Deployment")
    return [a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--network-policy")]


def grants(objects: list[dict], resource: str) -> list[str]:
    (role,) = by_kind(objects, "ClusterRole")
    return [verb for rule in role["rules"] if resource in rule["resources"] for verb in rule["verbs"]]


def test_off_by_default_but_every_job_still_gets_its_token():
    objects = render({})
    assert not by_kind(objects, "NetworkPolicy") and not network_policy_flag(objects)
    assert grants(objects, "secrets") == ["create"] and not grants(objects, "networkpolicies")  # tokens made, never read back


def test_on_the_operator_takes_the_webhook_from_anywhere_and_metrics_from_metrics_from():
    objects = render({"networkPolicy": {"enabled": True, "metricsFrom": [PROMETHEUS]}})
    (policy,) = by_kind(objects, "NetworkPolicy")
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    assert policy["metadata"]["namespace"] == "shardwright-system"
    assert policy["spec"] == {
        "podSelector": {"matchLabels": OPERATOR["podSelector"]["matchLabels"]}, "policyTypes": ["Ingress"],
        "ingress": [{"ports": [{"protocol": "TCP", "port": "webhook"}]},
                    {"from": [PROMETHEUS], "ports": [{"protocol": "TCP", "port": "metrics"}]}],
    }
    (flag,) = network_policy_flag(objects)
    assert json.loads(flag.removeprefix("--network-policy=")) == [OPERATOR, PROMETHEUS]
    assert grants(objects, "networkpolicies") == ["create", "get"]


def test_on_without_webhook_or_metrics_from_nothing_comes_in():
    objects = render({"networkPolicy": {"enabled": True}, "webhook": {"enabled": False}})
    (policy,) = by_kind(objects, "NetworkPolicy")
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    assert "ingress" not in policy["spec"] and policy["spec"]["policyTypes"] == ["Ingress"]
    (flag,) = network_policy_flag(objects)
    assert json.loads(flag.removeprefix("--network-policy=")) == [OPERATOR]


@pytest.mark.parametrize("peer", [{"pods": {}}, {}, "monitoring"], ids=["unknown-field", "empty", "not-an-object"])
def test_the_schema_refuses_what_is_no_network_policy_peer(peer):
    with pytest.raises(Exception, match="metricsFrom"):
        render({"networkPolicy": {"enabled": True, "metricsFrom": [peer]}})
