"""A small checker for Kubernetes structural schemas: what the API server enforces on a CR.

Covers the keywords our CRDs use: type, required, properties, enum, minimum/maximum with
boolean exclusive bounds, minItems/minLength/maxLength/pattern, items, additionalProperties,
nullable and x-kubernetes-int-or-string. Unknown fields are not errors (the server prunes
them). Returns problems as ``(path, message)`` pairs, paths spelled like our validator's.
"""

from __future__ import annotations

import re
from typing import Any

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def check(schema: dict[str, Any], value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every way ``value`` breaks ``schema``; empty when it conforms."""
    if value is None:
        return [] if schema.get("nullable") else [(path, "must not be null")]
    if schema.get("x-kubernetes-int-or-string"):
        ok = _TYPES["integer"](value) or _TYPES["string"](value)
        return [] if ok else [(path, "must be an integer or a string")]
    kind = schema["type"]
    if not _TYPES[kind](value):
        return [(path, f"must be of type {kind}")]
    out: list[tuple[str, str]] = []
    if "enum" in schema and value not in schema["enum"]:
        out.append((path, f"must be one of {schema['enum']}"))
    if "minimum" in schema:
        low, excl = schema["minimum"], schema.get("exclusiveMinimum", False)
        if value < low or (excl and value == low):
            out.append((path, f"must be {'>' if excl else '>='} {low}"))
    if "maximum" in schema:
        high, excl = schema["maximum"], schema.get("exclusiveMaximum", False)
        if value > high or (excl and value == high):
            out.append((path, f"must be {'<' if excl else '<='} {high}"))
    if kind == "string":
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            out.append((path, "has the wrong length"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append((path, f"must match {schema['pattern']}"))
    if kind == "array":
        if len(value) < schema.get("minItems", 0):
            out.append((path, f"must have at least {schema['minItems']} items"))
        for i, item in enumerate(value):
            out += check(schema.get("items", {}), item, f"{path}[{i}]") if "items" in schema else []
    if kind == "object":
        for name in schema.get("required", []):
            if name not in value:
                out.append((_join(path, name), "is required"))
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for name, item in value.items():
            sub = props.get(name, extra if isinstance(extra, dict) else None)
            if sub is not None:
                out += check(sub, item, _join(path, name))
    return out


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
