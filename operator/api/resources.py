"""A container's ``resources``: Kubernetes quantities and resource names, checked as pod
validation checks them, so a spec that passes here never gets a 422 at pod creation.

The quantity grammar is the schema's (``pattern`` in the CRD, as controller-gen writes it
for ``resource.Quantity``, minus the sign: a container asks for nothing negative). The
rules that involve a name or two values (:func:`problems`: known names, whole numbers for
extended resources, requests <= limits, no overcommit of extended resources and huge
pages) are cross-field rules, applied by ``validation.validate`` and so by the webhook;
the CRD checks the names with a CEL rule too (``rules.py``).
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from .base import ApiModel
from . import rules

#: A non-negative Kubernetes quantity: digits, an optional fraction, an optional suffix
#: (binary Ki..Ei, decimal n u m k M G T P E, or an exponent e3 / E-3 of at most 9 digits:
#: Kubernetes reads it as an int32, and a longer one overflowed the comparison of quantities).
QUANTITY_PATTERN = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][-+]?[0-9]{1,9}))?$"
#: Resource names a container may ask for without a domain.
STANDARD = ("cpu", "memory", "ephemeral-storage")
HUGEPAGES = "hugepages-"
#: ``<domain>/<name>``: a lowercase DNS subdomain, then a qualified name's last part.
EXTENDED_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
#: Longest domain of an extended name: ``requests.<domain>`` (a quota's name) is a DNS subdomain.
EXTENDED_DOMAIN_MAX = 253 - len("requests.")
#: The most resource names one map holds (bounds the cost of the CRD's CEL rule).
MAX_NAMES = 32
ALLOWED_NAMES = f"{', '.join(STANDARD)}, {HUGEPAGES}<size> or an extended resource <domain>/<name> such as nvidia.com/gpu"
_SUFFIX = {"": 0, "n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_SPLIT = re.compile(r"^\+?([0-9.]+)(.*)$")
#: Exact enough to compare any two quantities, wide enough for any exponent written.
_WIDE = decimal.Context(prec=60, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
#: The largest count of an extended resource: pod validation reads it in thousandths, as an int64.
WHOLE_MAX = (2**63 - 1) // 1000


def _quantity(value: str) -> str:
    if not re.fullmatch(QUANTITY_PATTERN, value):
        raise PydanticCustomError("quantity", "must be a quantity: a non-negative number with an optional suffix such as 500m, 8Gi or 1e3 (got {value})", {"value": repr(value)})
    return value


def _from_int(value: object) -> object:
    """``cpu: 2`` is as common as ``memory: 8Gi``; floats stay floats (the API server refuses them)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise PydanticCustomError("quantity", "must be a quantity, 0 or more (got {value})", {"value": value})
        return str(value)
    return value


#: A Kubernetes resource quantity, as an integer or a string.
Quantity = Annotated[
    str,
    BeforeValidator(_from_int),
    AfterValidator(_quantity),
    # minimum: for an integer, as the pattern is for a string (each applies to its own type).
    WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": QUANTITY_PATTERN, "minimum": 0}),
]


_NAMES = rules.extra(rules.resource_names(STANDARD, HUGEPAGES, EXTENDED_PATTERN, ALLOWED_NAMES))


class ResourcesSpec(ApiModel):
    """The container's requests and limits, as in a pod: cpu, memory, ephemeral-storage,
    hugepages-<size>, or an extended resource such as nvidia.com/gpu (whole numbers)."""

    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=MAX_NAMES, json_schema_extra=_NAMES)
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=MAX_NAMES, json_schema_extra=_NAMES)


def value(quantity: str) -> decimal.Decimal:
    """The number a quantity stands for (``500m`` -> 0.5, ``1Ki`` -> 1024)."""
    digits, suffix = _SPLIT.match(quantity).groups()  # type: ignore[union-attr]
    number = decimal.Decimal(digits)
    if suffix in _BINARY:
        return number * (2 ** _BINARY[suffix])
    exponent = int(suffix[1:]) if suffix[:1] in ("e", "E") and len(suffix) > 1 else _SUFFIX[suffix]
    return number.scaleb(exponent, _WIDE)


def name_problem(name: str) -> str | None:
    """Why a container cannot ask for ``name``; None when it can."""
    if name in STANDARD:
        return None
    if name.startswith(HUGEPAGES):
        size = name.removeprefix(HUGEPAGES)
        return None if re.fullmatch(QUANTITY_PATTERN, size) and value(size) > 0 else f"unknown resource name; {HUGEPAGES} takes a page size such as 2Mi"
    domain, _, short = name.partition("/")
    if not re.fullmatch(EXTENDED_PATTERN, name) or len(domain) > EXTENDED_DOMAIN_MAX or len(short) > 63:
        return f"unknown resource name; allowed: {ALLOWED_NAMES}"
    if "kubernetes.io" in domain or name.startswith("requests."):
        return "kubernetes.io names and requests.* are reserved; use your own domain, such as nvidia.com/gpu"
    return None


def problems(resources: ResourcesSpec) -> Iterable[tuple[str, str]]:
    """(path under ``resources``, message) for what pod validation would refuse."""
    for section in ("requests", "limits"):
        for name, quantity in getattr(resources, section).items():
            if why := name_problem(name):
                yield f"{section}.{name}", why
            elif name not in STANDARD and value(quantity) != value(quantity).to_integral_value():
                yield f"{section}.{name}", f"must be a whole number for {name} (got {quantity})"
            elif "/" in name and value(quantity) > WHOLE_MAX:
                yield f"{section}.{name}", f"must be at most {WHOLE_MAX} for {name} (got {quantity})"
    requests, limits = resources.requests, resources.limits
    for name, quantity in requests.items():
        if name_problem(name):
            continue
        limit = limits.get(name)
        if name not in STANDARD and (limit is None or value(limit) != value(quantity)):
            # Extended resources and huge pages cannot be overcommitted.
            yield f"requests.{name}", f"{name} needs limits.{name} equal to the request ({quantity}); got {limit or 'none'}"
        elif limit is not None and value(quantity) > value(limit):
            yield f"requests.{name}", f"must be <= limits.{name} ({limit}); got {quantity}"
    if any(n.startswith(HUGEPAGES) for n in {*requests, *limits}) and not {"cpu", "memory"} & {*requests, *limits}:
        yield "limits", f"{HUGEPAGES}* needs a cpu or memory request or limit as well"


__all__ = ["QUANTITY_PATTERN", "EXTENDED_PATTERN", "ALLOWED_NAMES", "STANDARD", "HUGEPAGES", "MAX_NAMES", "WHOLE_MAX", "Quantity", "ResourcesSpec", "value", "name_problem", "problems"]
