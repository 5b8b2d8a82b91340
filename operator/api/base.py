"""Shared pieces of every API model: camelCase aliases, strictness, metav1-style conditions."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors, not ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        use_enum_values=False,
    )

    def to_wire(self) -> dict:
        """The object as it appears in YAML/JSON: camelCase keys, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Condition(ApiModel):
    """The Kubernetes ``metav1.Condition`` shape."""

    #: What a list of conditions is in the CRD, as Kubernetes' own lists of them: a map keyed
    #: by ``type``, so server-side apply merges by type and each writer owns the types it sets.
    LIST_TYPE: ClassVar[dict[str, Any]] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}

    type: str = Field(description="Condition type, e.g. Running, Complete, Failed.")
    status: str = Field(description='"True", "False" or "Unknown".')
    reason: str = Field(description="CamelCase machine-readable reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str = Field(description="RFC 3339 time the status last changed.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the condition was computed for."
    )


#: An object's name: a DNS-1035 label, as a Service name must be (a TrainingJob's Service
#: takes it, and an API server without relaxed Service names refuses a leading digit).
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX = 63
NAME_RULE = f"a DNS-1035 label: at most {NAME_MAX} lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"


class ObjectMeta(BaseModel):
    """The part of ``metadata`` Shardwright reads; everything else passes through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    namespace: str = "default"
    generation: int | None = None
    uid: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
