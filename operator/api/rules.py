"""The CRDs' CEL rules (``x-kubernetes-validations``): what ``kubectl apply`` is told by the
API server itself, with or without the operator's webhook.

- :data:`NAME`: ``metadata.name`` is a DNS-1035 label (a CRD schema cannot constrain
  ``metadata`` otherwise; a root rule may read the name).
- :func:`frozen`: transition rules (``oldSelf``) that keep the fields a running generation
  was started with from changing unless the job is suspended (``spec.suspend: true`` in the
  stored object): the next generation starts from the spec, so an edit under a running one
  would apply at an unpredictable restart, with checkpoints of another shape.
- :func:`resource_names`: the names a container may ask for (``resources.py``).
- :data:`ELASTIC_REPLICAS`: ``spec.elastic.replicas`` within its bounds (``kubectl scale``
  writes it through the /scale subresource, which no webhook of ours sees).

Setting or unsetting a frozen field counts as a change. The rules compare with plain
``has`` and ``==``, item lists in order: what the API server's cost estimate admits.
"""

from __future__ import annotations

from typing import Any

from .base import NAME_MAX, NAME_PATTERN, NAME_RULE

NAME: dict[str, Any] = {
    # Judged at create only (a name never changes): a job made before this rule keeps
    # taking updates, its status ones included.
    "rule": f"oldSelf.hasValue() || (self.metadata.name.size() <= {NAME_MAX} && self.metadata.name.matches('{NAME_PATTERN}'))",
    "optionalOldSelf": True,
    "message": f"metadata.name must be {NAME_RULE}",
}

#: What each frozen field's message says after naming it.
_WHY = "the running generation was started with it"
_HOW = "set spec.suspend: true first, then change it together with suspend: false (the next generation starts with it)"


def _suspended() -> str:
    return "oldSelf.?suspend.orValue(false)"


def _present(obj: str, path: str) -> str:
    """CEL: the dotted ``path`` is set under ``obj`` (every step of it)."""
    parts = path.split(".")
    return " && ".join(f"has({obj}.{'.'.join(parts[:i + 1])})" for i in range(len(parts)))


def _same(new: str, old: str, path: str) -> str:
    """CEL: ``path`` is set in both and equal, or in neither. Plain ``has`` and ``==``: the
    optional form (``self.?a == oldSelf.?a``) costs the API server's estimate too much."""
    return (f"({_present(new, path)}) == ({_present(old, path)}) && "
            f"(!({_present(new, path)}) || {new}.{path} == {old}.{path})")


def frozen(paths: tuple[str, ...]) -> list[dict[str, str]]:
    """One transition rule per dotted ``paths`` (relative to ``spec``), naming the field."""
    return [
        {
            "rule": f"{_suspended()} || ({_same('self', 'oldSelf', path)})",
            "message": f"spec.{path} cannot change while the job is not suspended ({_WHY}); {_HOW}",
            "fieldPath": f".{path}",
        }
        for path in paths
    ]


def frozen_items(list_field: str, key: str, fields: tuple[str, ...]) -> list[dict[str, str]]:
    """Transition rules keeping the items of ``list_field`` (their ``key`` in order: none
    added, removed, renamed or moved) and each item's ``fields``; one rule per field, each
    comparing the items in order (linear, so the cost estimate stays in budget)."""
    def same(field: str) -> str:
        return (f"{_suspended()} || ("
                f"self.{list_field}.map(i, has(i.{field})) == oldSelf.{list_field}.map(i, has(i.{field})) && "
                f"self.{list_field}.filter(i, has(i.{field})).map(i, i.{field}) == "
                f"oldSelf.{list_field}.filter(i, has(i.{field})).map(i, i.{field}))")

    rules = [{
        "rule": same(key),
        "message": f"spec.{list_field}: no item may be added, removed, renamed or moved while the job is not suspended "
                   f"(the running generation was started with them; their replicas may change); {_HOW}",
        "fieldPath": f".{list_field}",
    }]
    return rules + [
        {
            "rule": same(field),
            "message": f"spec.{list_field}[*].{field} cannot change while the job is not suspended ({_WHY}); {_HOW}",
            "fieldPath": f".{list_field}",
        }
        for field in fields
    ]


def resource_names(standard: tuple[str, ...], hugepages: str, extended: str, allowed: str) -> dict[str, str]:
    """A rule on a ``requests``/``limits`` map: every key a name a container may ask for."""
    names = ", ".join(f"'{n}'" for n in standard)
    return {
        "rule": f"self.all(k, k in [{names}] || k.startsWith('{hugepages}') || "
                f"(k.matches('{extended}') && !k.contains('kubernetes.io') && !k.startsWith('requests.')))",
        "message": f"unknown resource name; allowed: {allowed}",
    }


#: On ``spec.elastic``: what ``kubectl scale`` (the /scale subresource) and an HPA may set.
ELASTIC_REPLICAS: dict[str, Any] = {
    "rule": "!has(self.replicas) || (self.replicas >= self.minReplicas && self.replicas <= self.maxReplicas)",
    # format(), not string() and '+': the API server's cost estimate refuses those here.
    "messageExpression": "'spec.elastic.replicas must be within [minReplicas, maxReplicas] = [%d, %d]; got %d'"
                         ".format([self.minReplicas, self.maxReplicas, self.replicas])",
    "fieldPath": ".replicas",
}


def extra(*rules: dict[str, Any]) -> dict[str, Any]:
    """A model's ``json_schema_extra`` carrying ``rules``."""
    return {"x-kubernetes-validations": list(rules)}


__all__ = ["NAME", "ELASTIC_REPLICAS", "frozen", "frozen_items", "resource_names", "extra"]
