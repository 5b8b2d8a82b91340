"""Generate CustomResourceDefinitions from the pydantic models.

The models are the single source of truth: ``shardwright crds`` writes ``crds/*.yaml`` and
a test fails when the checked-in files drift. pydantic emits JSON Schema; Kubernetes wants a
*structural* OpenAPI v3 schema, so references are inlined, ``X | None`` becomes
``nullable``, exclusive bounds become booleans, a list of conditions becomes a map list
keyed by ``type``, and titles and ``additionalProperties: false`` are dropped (unknown
fields are pruned by the API server and rejected by ``kubectl --validate=strict`` and by
our webhook). A field marked ``x-kubernetes-preserve-unknown-fields`` (a pod template's
PodSpec) becomes a bare object the API server keeps as written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from . import rules
from .base import Condition
from .podtemplate import PRESERVE_UNKNOWN
from .servingpool import ServingPool
from .trainingjob import GROUP, VERSION, TrainingJob

#: Every kind that gets a CRD.
KINDS = (TrainingJob, ServingPool)
#: Where ``shardwright crds`` writes them (relative to the repository): for ``kubectl apply
#: --server-side -f crds/``, the operator chart (``crds.install``) and the CRDs-only chart.
OUT_DIRS = ("crds", "helm/shardwright/crd-files", "helm/shardwright-crds/crd-files")

_DROP = {"title", "default", "$defs"}


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rewrite one pydantic JSON Schema node (recursively) into a structural schema node."""
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        return structural({**target, **extra}, defs)
    if "anyOf" in schema and not schema.get("x-kubernetes-int-or-string"):
        variants = [v for v in schema["anyOf"] if v.get("type") != "null"]
        if len(variants) == 1 and len(variants) < len(schema["anyOf"]):
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            node = structural({**variants[0], **rest}, defs)
            node["nullable"] = True
            return node
    if all(schema.get(k) == v for k, v in PRESERVE_UNKNOWN.items()):
        # No properties to prune by: the object is stored as sent (its consumer validates it).
        return {"type": "object", "description": schema.get("description", ""), **PRESERVE_UNKNOWN}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
            if value.get("$ref", "").endswith(f"/{Condition.__name__}"):
                out.update(Condition.LIST_TYPE)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = structural(value, defs)
        elif key == "anyOf":
            out[key] = [structural(sub, defs) for sub in value]
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out[key.replace("exclusive", "").lower()] = value
            out[key] = True
        else:
            out[key] = value
    if "properties" in out:
        out.setdefault("type", "object")
    return out


def _section(model: type, field: str) -> dict[str, Any]:
    full = model.model_json_schema(by_alias=True)
    node = structural(full["properties"][field], full.get("$defs", {}))
    node.pop("nullable", None)
    return node


def crd_for(kind: type) -> dict[str, Any]:
    """The ``apiextensions.k8s.io/v1`` CRD of one kind."""
    singular = kind.KIND.lower()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "shardwright"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.KIND,
                "listKind": f"{kind.KIND}List",
                "plural": kind.PLURAL,
                "singular": singular,
                "shortNames": list(kind.SHORT_NAMES),
                "categories": ["shardwright"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}} | ({"scale": kind.SCALE} if hasattr(kind, "SCALE") else {}),
                    "additionalPrinterColumns": list(kind.PRINTER_COLUMNS),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (kind.__doc__ or "").strip(),
                            "required": ["spec"],
                            "x-kubernetes-validations": [rules.NAME],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": _section(kind, "spec"),
                                "status": _section(kind, "status"),
                            },
                        }
                    },
                }
            ],
        },
    }


class _NoAliases(yaml.SafeDumper):
    """Spell out repeated nodes (shared enum lists) instead of writing ``&id001`` anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(kind: type) -> str:
    return "# Generated by `shardwright crds` from the pydantic models. Do not edit.\n" + yaml.dump(
        crd_for(kind), Dumper=_NoAliases, sort_keys=False, width=100
    )


def write_all(out_dir: str | Path) -> list[Path]:
    """Write one file per kind; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in KINDS:
        path = out / f"{kind.PLURAL}.{GROUP}.yaml"
        path.write_text(render(kind))
        paths.append(path)
    return paths


def drifted(out_dir: str | Path) -> list[str]:
    """Names of CRD files in ``out_dir`` that differ from what the models generate."""
    out = Path(out_dir)
    return [
        f"{kind.PLURAL}.{GROUP}.yaml"
        for kind in KINDS
        if not (p := out / f"{kind.PLURAL}.{GROUP}.yaml").exists() or p.read_text() != render(kind)
    ]
