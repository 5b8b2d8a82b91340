"""Hostile manifests (issue 23): Hypothesis breaks the examples' TrainingJob and ServingPool
one field at a time (wrong types, out-of-range and huge numbers, unicode, unknown fields,
removed fields, hostile resources) and writes them as YAML with its tricks (1.1 booleans,
dates, anchors, aliases, tags, duplicate keys). What must hold:

- ``validate`` (so ``shardwright validate``, ``run``, ``serve`` and the webhook) never
  raises; a problem of the schema names the field that was broken;
- ``shardwright validate FILE`` exits 0 or 2, never with a traceback, one ``path: message``
  line per problem;
- the webhook's ``admit`` refuses exactly what ``validate`` refuses, with its messages;
- on the real API server (a bounded number of examples, ``--dry-run=server``): the CRD
  accepts every manifest ``validate`` accepts, and the pods it would make (their names,
  their containers' resources); it refuses every manifest whose schema ``validate``
  refuses, naming the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import kopf
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings, strategies as st

from shardwright.operator import cli, handlers
from shardwright.operator.api import validate
from shardwright.operator.api.resources import QUANTITY_PATTERN, WHOLE_MAX
from shardwright.operator.api.validation import InvalidManifest, check_schema, load_documents
from shardwright.operator.backends import pods
from tests.support.manifests import DROP, REPO, edited

EXAMPLES = {"TrainingJob": yaml.safe_load((REPO / "examples" / "tiny-train.yaml").read_text()),
            "ServingPool": yaml.safe_load((REPO / "examples" / "tiny-serve.yaml").read_text())}
#: Where each kind's containers ask for resources.
CONTAINERS = {"TrainingJob": "workers", "ServingPool": "roles"}

# ----------------------------------------------------------------------------- strategies

NUMBERS = st.one_of(
    st.integers(-3, 3), st.integers(-(2**70), 2**70),
    st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.5, -0.0, 1e308, 5e-324]),
)
TEXT = st.one_of(
    st.text(max_size=20), st.text(st.characters(codec="utf-8"), min_size=1, max_size=8),
    st.sampled_from(["", " ", "abc", "Tiny", "softmax ", "1e400", "٣", "１０", "Infinity", "NaN", "\u202eevil", "a" * 300,
                     "tiny\x00", "${HOME}", "{{ .Values }}", "null", "true"]),
)
HOSTILE = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT,
                    st.lists(st.integers(0, 3), max_size=3), st.dictionaries(st.text(max_size=6), st.integers(0, 3), max_size=2))
RESOURCE_NAMES = st.one_of(
    st.sampled_from(["cpu", "memory", "ephemeral-storage", "nvidia.com/gpu", "example.com/foo", "hugepages-2Mi", "hugepages-1Gi",
                     "gpu", "CPU", "kubernetes.io/gpu", "requests.x/y", "nvidia.com/", "/gpu", "a/b/c", "ünï.com/x", "x" * 70 + ".com/y"]),
    st.text(max_size=12),
)
QUANTITIES = st.one_of(
    st.from_regex(QUANTITY_PATTERN, fullmatch=True).filter(lambda q: len(q) < 30),
    st.integers(-2, 2**64), st.sampled_from(["abc", "1.5.5", "-1", "1Kb", "", " 1", "1e400", "0.5", "1e-3", "1Ei", "+1", "1E", "٣"]),
    st.floats(0, 64, allow_nan=False),
)
RESOURCES = st.fixed_dictionaries({}, optional={
    "requests": st.dictionaries(RESOURCE_NAMES, QUANTITIES, max_size=3),
    "limits": st.dictionaries(RESOURCE_NAMES, QUANTITIES, max_size=3),
})


def paths(node: Any, prefix: str = "") -> list[str]:
    """Every field path of ``node``, spelled as ``validate`` names fields."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, sub in items:
        path = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}" if prefix else key
        out += [path, *paths(sub, path)]
    return out


@st.composite
def broken(draw, kind: str | None = None, metadata: bool = True) -> tuple[dict[str, Any], str]:
    """A copy of an example with one field broken, and that field's path."""
    kind = kind or draw(st.sampled_from(sorted(EXAMPLES)))
    doc = EXAMPLES[kind]
    candidates = [p for p in paths(doc) if metadata or not p.startswith(("metadata", "apiVersion", "kind"))]
    how = draw(st.sampled_from(["set", "set", "drop", "add", "resources", "name"]))
    if how == "resources":
        path = f"spec.{CONTAINERS[kind]}[0].resources"
        return edited({path: draw(RESOURCES)}, doc), path
    if how == "name":
        name = draw(st.one_of(st.from_regex(r"[a-z][-a-z0-9]{0,70}[a-z0-9]", fullmatch=True), TEXT))
        return edited({"metadata.name": name}, doc), "metadata.name"
    if how == "add":
        parent = draw(st.sampled_from([p for p in candidates if isinstance(_at(doc, p), dict)] + [""]))
        key = draw(st.text(min_size=1, max_size=10).filter(lambda k: not re.search(r"[.\[\]]", k) and k not in (_at(doc, parent) if parent else doc)))
        path = f"{parent}.{key}" if parent else key
        return edited({path: draw(HOSTILE)}, doc), path
    path = draw(st.sampled_from(candidates))
    return edited({path: DROP if how == "drop" else draw(HOSTILE)}, doc), path


def _at(doc: Any, path: str) -> Any:
    node = doc
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        node = node[int(index)] if index else node[name]
    return node


def related(problem: str, field: str) -> bool:
    """``problem`` names ``field``, a field inside it, or the mapping that holds it."""
    def inside(a: str, b: str) -> bool:
        return a == b or a.startswith((f"{b}.", f"{b}["))
    return inside(problem, field) or inside(field, problem) or (problem == "apiVersion/kind" and field in ("apiVersion", "kind"))


def schema_problems(doc: Any) -> list[str]:
    """The paths the schema alone refuses in ``doc`` (what the CRD's schema checks too)."""
    return [p.path for p in check_schema(doc)[1]]


def plain(doc: Any) -> bool:
    """JSON can carry it (no NaN or infinity), and it has no null: the API server drops a
    null where the schema has no ``nullable`` before it validates (the field is unset), so
    ``model: null`` means no model there, and the webhook sees it so."""
    if doc is None or isinstance(doc, float) and not math.isfinite(doc):
        return False
    if isinstance(doc, dict):
        return all(plain(v) for v in doc.values())
    if isinstance(doc, list):
        return all(plain(v) for v in doc)
    return True


# ----------------------------------------------------------------------------- validate, the webhook, the CLI

@settings(max_examples=600, deadline=None)
@given(broken())
def test_validate_never_raises_and_names_the_broken_field(case):
    doc, field = case
    obj, problems = validate(doc)
    assert (obj is None) == bool(problems)
    event("rejected" if problems else "accepted")
    schema = schema_problems(doc)
    if schema:
        event("rejected by the schema")
        assert any(related(p.path, field) for p in problems), (field, problems)
    for p in problems:
        assert p.path and p.message and "Traceback" not in p.message, p


@settings(max_examples=300, deadline=None)
@given(broken())
def test_the_webhook_refuses_what_validate_refuses_with_its_messages(case):
    doc, _ = case
    _, problems = validate(doc)
    if not problems:
        assert handlers.admit(body=doc) is None
        return
    with pytest.raises(kopf.AdmissionError) as refused:
        handlers.admit(body=doc)
    assert refused.value.code == 422 and str(refused.value) == "; ".join(str(p) for p in problems)


#: Ways YAML text says something other than it seems, each a replacement for one value.
YAML_TRICKS = ["yes", "no", "on", "off", "~", ".inf", "-.nan", "0x1F", "0o17", "1_000", "2001-12-14", "2001-12-14t21:59:43.10-05:00",
               "!!binary aGVsbG8=", "!!python/object/apply:os.system ['true']", "!!set {a, b}", "&a 1", "*a", "*undefined",
               "[1, 2", "{a: 1", "'unterminated", "|\n  block", "\t1", "\"\\u0000\"", "!!float 1", "!!str 5", "<<: {a: 1}"]


@st.composite
def yaml_text(draw) -> str:
    doc, _ = draw(broken())
    text = yaml.safe_dump(doc, sort_keys=False)
    lines = text.splitlines()
    how = draw(st.sampled_from(["value", "value", "duplicate", "documents", "bom", "laughs", "none"]))
    if how == "value":
        scalars = [i for i, line in enumerate(lines) if re.match(r"^\s*[-\w]+: \S", line)]
        i = draw(st.sampled_from(scalars))
        lines[i] = f"{lines[i].split(':', 1)[0]}: {draw(st.sampled_from(YAML_TRICKS))}"
    elif how == "duplicate":
        lines.append(draw(st.sampled_from(["kind: TrainingJob", "spec: {}", "metadata: {name: other}"])))
    elif how == "documents":
        lines = [*lines, "---", draw(st.sampled_from(["", "~", "42", "- a", "kind: Secret", text]))]
    elif how == "bom":
        lines[0] = "\ufeff" + lines[0]
    elif how == "laughs":  # a billion laughs: nine levels of ten aliases each
        lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)] + lines
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=yaml_text())
def test_the_cli_exits_0_or_2_naming_fields_never_a_traceback(text, tmp_path, capsys):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    code = cli.main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert code in (0, 2) and "Traceback" not in out + err
    event(f"exit {code}")
    try:
        found = [p for doc in load_documents(path) for p in validate(doc)[1]]
    except InvalidManifest as e:
        found = e.problems
    assert code == (2 if found else 0)
    for problem in found:  # each as `FILE: [KIND/NAME: ]path: message`
        assert f"{path}: " in err and f"{problem}\n" in err, (problem, err)


# ----------------------------------------------------------------------------- the real API server

def server(kube, namespace: str, doc: dict[str, Any]) -> tuple[bool, str]:
    done = kube.kubectl("-n", namespace, "create", "--dry-run=server", "-o", "name", "-f", "-", input=json.dumps(doc), check=False)
    return done.returncode == 0, done.stderr


def pods_of(obj) -> list[dict[str, Any]]:
    """A pod per container group of an accepted object: its name as the operator makes it
    (the highest generation), and the group's resources."""
    owner = pods.Owner(name=obj.metadata.name, namespace="ns", uid="u")
    groups = obj.spec.workers if obj.kind == "TrainingJob" else obj.spec.roles
    names = [pods.pod_name(owner, 2**31 - 1, str(g.name), 9999) for g in groups]
    return [{
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"hostname": name, "containers": [{"name": "ranks", "image": "x", "resources": g.resources.to_wire()}]},
    } for name, g in zip(names, groups)]


@pytest.mark.cluster
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=broken(metadata=False).filter(lambda case: plain(case[0])))
def test_the_crd_and_validate_agree_on_the_api_server(kube, namespace, case):
    doc, field = case
    event(f"a {doc['kind']}")  # both kinds reach the API server
    obj, problems = validate(doc)
    accepted, told = server(kube, namespace, doc)
    schema = schema_problems(doc)
    if obj is not None:
        event("accepted by validate")
        assert accepted, f"validate accepts, the API server refuses {field}: {told}"
        for pod in pods_of(obj):
            ok, why = server(kube, namespace, pod)
            assert ok, f"validate accepts {field}, pod creation would fail: {why}"
    elif schema:
        event("refused by the schema")
        assert not accepted, f"the CRD accepts what validate refuses: {problems}"
        ancestors = [field[:m.start()] for m in re.finditer(r"[.\[]", field)][1:] + [field]
        # the server escapes some characters; kubectl's output read as text turns a bare \r into \n
        assert any(a in told or a.replace("\r", "\n") in told or json.dumps(a)[1:-1] in told for a in ancestors), (field, told)
    else:
        event("refused by a cross-field rule (the webhook's)")


@pytest.mark.cluster
@pytest.mark.parametrize("count", [WHOLE_MAX, WHOLE_MAX + 1])
def test_the_largest_count_of_an_extended_resource_is_the_api_servers(kube, namespace, count):
    """Pod validation reads an extended resource in thousandths as an int64: validate draws the same line."""
    limits = {"nvidia.com/gpu": count}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "counted"},
           "spec": {"containers": [{"name": "ranks", "image": "x", "resources": {"limits": {"nvidia.com/gpu": str(count)}}}]}}
    ok, why = server(kube, namespace, pod)
    refused = validate(edited({"spec.workers[0].resources": {"limits": limits}}))[1]
    assert ok == (count == WHOLE_MAX), why
    assert [p.message for p in refused if "at most" in p.message] == ([] if ok else [f"must be at most {WHOLE_MAX} for nvidia.com/gpu (got {count})"])


def test_the_strategies_reach_every_kind_of_break():
    """Not vacuous: a drawn manifest can be accepted, refused by the schema and refused by a cross-field rule."""
    refused = validate(edited({"spec.workers[0].resources": {"requests": {"gpu": 1}}}))[1]
    assert refused and schema_problems(edited({"spec.training.steps": "x"})) and schema_problems(EXAMPLES["TrainingJob"]) == []
    assert validate(edited({"spec.data.microBatch": 17}))[1] and not schema_problems(edited({"spec.data.microBatch": 17}))
