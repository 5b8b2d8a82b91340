"""Objects read back from the API server, parsed leniently: a field this code does not know
is dropped and named, never an error.

The server stores what its CRD allows, and its CRD may be newer than the operator reading
it (an operator rolled back past a new field, a later version's field in storage). Refusing
such an object would wedge the job for good. What a user sends stays strict:
``shardwright validate`` and the admission webhook call :func:`validation.validate`, which
names an unknown field as a mistake. Every field the model knows is still validated here.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Iterator
from typing import Any

import pydantic

from . import validation
from .servingpool import ServingPool
from .trainingjob import TrainingJob

_MODELS: dict[str, type[pydantic.BaseModel]] = {kind.KIND: kind for kind in (TrainingJob, ServingPool)}


def read(doc: Any) -> tuple[TrainingJob | ServingPool | None, list[validation.Problem], list[str]]:
    """:func:`validation.validate` of ``doc`` without the fields its model does not know:
    (the object or None, the problems, the paths dropped, e.g. ``spec.futureField``)."""
    model = _MODELS.get(doc.get("kind")) if isinstance(doc, dict) else None
    if model is None:
        return (*validation.validate(doc), [])
    known = copy.deepcopy(doc)
    dropped = list(_drop_unknown(model, known, ""))
    return (*validation.validate(known), dropped)


def _drop_unknown(model: type[pydantic.BaseModel], node: Any, path: str) -> Iterator[str]:
    """Delete from ``node`` (in place, at every depth) the keys ``model`` has no field for,
    yielding their paths. Models that keep extra keys (``metadata``) keep them."""
    if not isinstance(node, dict) or model.model_config.get("extra") != "forbid":
        return
    fields = {name: f.annotation for n, f in model.model_fields.items() for name in (n, f.alias) if name}
    for key in list(node):
        where = f"{path}.{key}" if path else key
        if key not in fields:
            del node[key]
            yield where
        else:
            yield from _drop_in_value(fields[key], node[key], where)


def _drop_in_value(annotation: Any, value: Any, path: str) -> Iterator[str]:
    """:func:`_drop_unknown` inside a field's value: a model, ``X | None``, ``list[X]`` or
    ``dict[str, X]``; anything else holds no model."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            yield from _drop_in_value(inner[0], value, path)
    elif origin is list and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _drop_in_value(args[0], item, f"{path}[{i}]")
    elif origin is dict and isinstance(value, dict):
        for key, item in value.items():
            yield from _drop_in_value(args[1], item, f"{path}.{key}")
    elif isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        yield from _drop_unknown(annotation, value, path)


__all__ = ["read"]
