"""Turn a manifest into a ``TrainingJob`` or a ``ServingPool``, or into problems that name the
field and the fix.

One function, :func:`validate`, serves ``shardwright validate``, ``shardwright run``,
``shardwright serve`` and the admission webhook, so a user sees the same message wherever
bad input is caught. It dispatches on ``apiVersion`` and ``kind``: schema checks first, then
the kind's cross-field rules (``check_spec`` here, ``servingpool.check_pool_spec``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
import yaml

from . import command, devices, localpaths, podtemplate
from .base import NAME_RULE
from .enums import AttentionKind, DataSource, SequenceKind, StragglerAction
from .resources import ResourcesSpec, problems as resource_problems
from .trainingjob import CheckpointSpec, TrainingJob, TrainingJobSpec
from shardwright.workers import datafiles, storage
from shardwright.workers.config import LINEAR_KINDS, LORA_ATTENTION_TARGETS, sequence_layout, softmax_kernel

if TYPE_CHECKING:
    from .servingpool import ServingPool

SUPPORTED = {("shardwright.io/v1alpha1", "TrainingJob"): TrainingJob}
POOL_KEY = ("shardwright.io/v1alpha1", "ServingPool")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One reason a manifest is rejected: the field path and what is allowed there."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidManifest(ValueError):
    """A manifest failed validation; ``problems`` says where and why."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(f"{prefix}{p}" for p in problems))


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    """The YAML documents in ``path`` (empty ones skipped); bad YAML is an InvalidManifest."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InvalidManifest([Problem("file", f"cannot read: {e.strerror}")], str(path)) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise InvalidManifest([Problem("yaml", f"{where}{problem}")], str(path)) from None
    if not docs:
        raise InvalidManifest([Problem("yaml", "no documents in file")], str(path))
    if any(_too_big(d) for d in docs):
        raise InvalidManifest([Problem("yaml", f"more than {MAX_NODES} values once its aliases are expanded; write the values out")], str(path))
    return docs


#: Most values a document may hold with its YAML aliases expanded: nested aliases (a
#: "billion laughs") are a few lines of YAML and more JSON than any memory holds.
MAX_NODES = 100_000


def _too_big(doc: Any) -> bool:
    """Whether ``doc`` holds more than :data:`MAX_NODES` values, counting shared ones again."""
    stack, seen = [doc], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            return True
        if isinstance(node, dict):
            stack += node.values()
        elif isinstance(node, list):
            stack += node
    return False


def parse(doc: Any, source: str = "") -> TrainingJob | ServingPool:
    """The validated object, or ``InvalidManifest`` listing every problem found."""
    obj, problems = validate(doc)
    if problems:
        raise InvalidManifest(problems, source)
    assert obj is not None
    return obj


def validate(doc: Any) -> tuple[TrainingJob | ServingPool | None, list[Problem]]:
    """Schema checks first, then cross-field rules on a schema-valid spec."""
    obj, problems = check_schema(doc)
    if obj is None:
        return None, problems
    if obj.kind == "ServingPool":
        from .servingpool import check_pool_spec  # servingpool imports this module

        problems = list(check_pool_spec(obj.spec))
    else:
        problems = list(check_spec(obj.spec))
    return (None, problems) if problems else (obj, [])


def check_schema(doc: Any) -> tuple[TrainingJob | ServingPool | None, list[Problem]]:
    """The kind's schema alone (what the CRD's schema checks too): types, bounds, enums,
    required and unknown fields, names and quantities; no cross-field rule."""
    if not isinstance(doc, dict):
        return None, [Problem("(document)", f"must be a mapping (got {type(doc).__name__})")]
    got = (doc.get("apiVersion"), doc.get("kind"))
    key = got if all(isinstance(part, str) for part in got) else None  # a list or mapping there is no kind (nor hashable)
    if key == POOL_KEY:
        from .servingpool import ServingPool

        model: type[pydantic.BaseModel] = ServingPool
    elif key in SUPPORTED:
        model = SUPPORTED[key]
    else:
        allowed = ", ".join(f"{v} {k}" for v, k in [*SUPPORTED, POOL_KEY])
        return None, [Problem("apiVersion/kind", f"must be one of: {allowed} (got {got[0]} {got[1]})")]
    doc = _whole_numbers(doc)
    if huge := list(_huge_integers(doc)):
        return None, huge
    try:
        # Strict JSON-mode validation: the types the CRD schema (and so the API server)
        # accepts, no more. Lax mode would take `steps: "5"`, `suspend: "yes"` or
        # `heads: true` here while `kubectl apply` rejects them; JSON mode still reads
        # enum values from their strings.
        return model.model_validate_json(json.dumps(doc, default=str), strict=True), []  # type: ignore[return-value]
    except pydantic.ValidationError as e:
        return None, [_problem(model, err) for err in e.errors()]


#: The API server holds integers as int64; a larger one is a float there, which no integer field takes.
INT64 = range(-(2**63), 2**63)


def _whole_numbers(node: Any) -> Any:
    """``node`` with every float that is a whole int64 (``2.0``) an int, as the API server
    reads JSON numbers: ``steps: 2.0`` is ``steps: 2`` there, so it is here."""
    if isinstance(node, float) and node.is_integer() and int(node) in INT64:
        return int(node)
    if isinstance(node, dict):
        return {key: _whole_numbers(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_whole_numbers(value) for value in node]
    return node


def _huge_integers(node: Any, loc: tuple = ()) -> Iterable[Problem]:
    """An integer the API server cannot hold, anywhere in the document."""
    if isinstance(node, int) and not isinstance(node, bool) and node not in INT64:
        yield Problem(_format_loc(loc), f"must be between -2^63 and 2^63-1 (got {node})")
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _huge_integers(value, (*loc, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _huge_integers(value, (*loc, index))


# ----------------------------------------------------------------------------- cross-field rules


def _check_data_source(spec: TrainingJobSpec) -> Iterable[Problem]:
    """Data sources (docs/data.md): what each needs, and what admission can read of local paths."""
    data, model_dir = spec.data, spec.model.from_
    if data.source is DataSource.TEXT and model_dir is None:
        yield Problem("spec.data.source", "text is tokenized with the model's tokenizer: set spec.model.from "
                      "to a Hugging Face directory with tokenizer.json")
    elif (data.source is DataSource.TEXT and not storage.is_url(model_dir) and localpaths.checked_here()
          and not (Path(model_dir) / "tokenizer.json").is_file()):
        yield Problem("spec.model.from", f"{model_dir} has no tokenizer.json; source text tokenizes with it")
    held = data.validation
    if data.source is DataSource.SYNTHETIC and held is not None:
        yield Problem("spec.data.validation", "synthetic data has its own held-out stream; remove it")
    if data.source is DataSource.FILE and (storage.is_url(data.path or "") or (held and storage.is_url(held.path or ""))):
        yield Problem("spec.data.path", "source file reads a local file; use source tokens for an s3:// URI")
    if data.source is DataSource.FILE and held is not None and held.fraction:
        yield Problem("spec.data.validation.fraction", "source file has no documents to hold out; use validation.path")
    if held is not None and held.path and held.fraction:
        yield Problem("spec.data.validation", "give path or fraction, not both")
    if spec.evaluation is not None and data.source is not DataSource.SYNTHETIC and not (held and (held.path or held.fraction)):
        yield Problem("spec.data.validation", f"spec.evaluation reads held-out data, which source {data.source} has only "
                      "with validation.path" + ("" if data.source is DataSource.FILE else " or validation.fraction"))
    if data.source in (DataSource.TEXT, DataSource.TOKENS) and localpaths.checked_here():
        for field, message in datafiles.problems(str(data.source), data.path, data.field, held.path if held else None):
            yield Problem(field, message)


def check_spec(spec: TrainingJobSpec) -> Iterable[Problem]:
    """Rules that involve more than one field; each names the field to change."""
    m = spec.model.resolve()
    if m.dim % m.heads:
        yield Problem("spec.model.heads", f"must divide dim ({m.dim}); got {m.heads}")
    elif (m.dim // m.heads) % 2:  # only meaningful once heads divides dim
        yield Problem("spec.model.heads", f"dim/heads must be even for rotary positions; got {m.dim}/{m.heads}")
    if m.heads % m.kv_heads:
        yield Problem("spec.model.kvHeads", f"must divide heads ({m.heads}); got {m.kv_heads}")

    names = [g.name for g in spec.workers]
    for i, name in enumerate(names):
        if name in names[:i]:
            yield Problem(f"spec.workers[{i}].name", f"duplicate group name {name!r}")
    yield from _check_parallelism(spec, m)
    linear = sorted({k for k in m.layer_kinds if k in LINEAR_KINDS})
    if spec.export is not None and linear:  # refused here, not by rank 0 after the last step
        yield Problem("spec.export", f"only softmax-attention models export to the Hugging Face layout; this model has {', '.join(linear)} layers: remove export")
    if spec.training.lora and linear and (bad := [t for t in spec.training.lora.targets if t in LORA_ATTENTION_TARGETS]):
        yield Problem("spec.training.lora.targets", f"{', '.join(bad)} name attention projections, which {', '.join(linear)} "
                      "layers do not have; with linear-attention layers LoRA can target gate_proj, up_proj, down_proj")

    data = spec.data
    if data.source is not DataSource.SYNTHETIC and not data.path:
        yield Problem("spec.data.path", f"required when source is {data.source}")
    if data.source is DataSource.SYNTHETIC and data.path:
        yield Problem("spec.data.path", "only used with source: file, text or tokens; remove it or set the source")
    yield from _check_data_source(spec)
    if data.micro_batch > data.global_batch:
        yield Problem("spec.data.microBatch", f"must be <= globalBatch ({data.global_batch}); got {data.micro_batch}")

    if (el := spec.elastic) is not None:
        replicas = sum(g.replicas for g in spec.workers)
        if el.min_replicas > el.max_replicas:
            yield Problem("spec.elastic.minReplicas", f"must be <= maxReplicas ({el.max_replicas}); got {el.min_replicas}")
        elif not el.min_replicas <= replicas <= el.max_replicas:
            yield Problem("spec.workers", f"{replicas} replicas in total is outside elastic bounds [{el.min_replicas}, {el.max_replicas}]")
        if el.replicas is not None and not el.min_replicas <= el.replicas <= el.max_replicas:
            yield Problem("spec.elastic.replicas", f"must be within [minReplicas, maxReplicas] = [{el.min_replicas}, {el.max_replicas}]; got {el.replicas}")

    for i, group in enumerate(spec.workers):
        yield from check_resources(f"spec.workers[{i}].resources", group.resources)
        for where, message in [*podtemplate.problems(f"spec.workers[{i}]", group), *devices.problems(f"spec.workers[{i}]", group)]:
            yield Problem(where, message)
    yield from (Problem(where, message) for where, message in command.problems(spec))
    yield from _check_checkpoint(spec.checkpoint)

    backoff = spec.failure_policy.backoff
    if backoff.max_seconds < backoff.initial_seconds:
        yield Problem("spec.failurePolicy.backoff.maxSeconds", f"must be >= initialSeconds ({backoff.initial_seconds})")
    for i, rule in enumerate(spec.failure_policy.rules):
        path = f"spec.failurePolicy.rules[{i}]"
        if not rule.exit_codes and rule.message is None:
            yield Problem(path, "needs exitCodes or message to match on")
        if rule.message is not None:
            try:
                re.compile(rule.message)
            except re.error as e:
                yield Problem(f"{path}.message", f"not a valid regular expression: {e}")
    stragglers = spec.straggler_policy
    if stragglers.cordon and stragglers.action is not StragglerAction.REPLACE:
        yield Problem("spec.stragglerPolicy.cordon", f"only used with action: replace (only a replaced rank's node is cordoned); got action: {stragglers.action}")


def _check_checkpoint(ckpt: CheckpointSpec) -> Iterable[Problem]:
    """Object-store settings go with an s3:// uri; a volume claim with a path."""
    on_s3 = (ckpt.uri or "").startswith("s3://")
    for field, value in (("credentialsSecret", ckpt.credentials_secret), ("endpoint", ckpt.endpoint)):
        if value is not None and not on_s3:
            yield Problem(f"spec.checkpoint.{field}", f"only used with an s3:// uri; got uri: {ckpt.uri!r}")
    if ckpt.volume_claim is not None and on_s3:
        yield Problem("spec.checkpoint.volumeClaim", f"only used with a path uri (or none): checkpoints go to {ckpt.uri}, not to a volume")


def check_resources(path: str, resources: ResourcesSpec) -> Iterable[Problem]:
    """What pod validation would refuse in one container's ``resources`` at ``path``."""
    for where, message in resource_problems(resources):
        yield Problem(f"{path}.{where}", message)


def _check_parallelism(spec: TrainingJobSpec, m) -> Iterable[Problem]:
    par, world = spec.parallelism, spec.world_size
    sp = par.sequence.degree
    for axis in ("tensor", "pipeline"):
        if getattr(par, axis) != 1:
            yield Problem(f"spec.parallelism.{axis}", f"{axis} parallelism is not supported by the Shardwright worker yet; allowed: 1")
    if par.auto and (par.data is not None or sp != 1):
        yield Problem("spec.parallelism.auto", "leave data and sequence unset when auto is true")
    if world % sp:
        yield Problem("spec.parallelism.sequence.degree", f"must divide the world size ({world} ranks from spec.workers); got {sp}")
        return
    dp = par.data if par.data is not None else world // sp
    if dp * sp != world:
        yield Problem("spec.parallelism.data", f"data x sequence must equal the world size ({world}); got {dp} x {sp}")
    if spec.data.global_batch < dp:
        yield Problem("spec.data.globalBatch", f"must be at least the data-parallel degree ({dp}) so every rank has a sample; got {spec.data.global_batch}")
    if sp == 1:
        return
    kind = par.sequence.kind
    if kind is SequenceKind.ULYSSES and (m.heads % sp or m.kv_heads % sp):
        yield Problem("spec.parallelism.sequence.degree", f"ulysses splits heads: the degree must divide heads ({m.heads}) and kvHeads ({m.kv_heads}); got {sp}")
    if kind is SequenceKind.LASP2 and AttentionKind.SOFTMAX in m.layer_kinds:
        yield Problem("spec.parallelism.sequence.kind", "lasp2 is for linear-attention layers and this model has softmax layers; allowed: auto, ring, zigzag, ulysses, tokenring")
    has_linear = any(k in LINEAR_KINDS for k in m.layer_kinds)
    if kind is SequenceKind.ZIGZAG and has_linear:
        yield Problem("spec.parallelism.sequence.kind", "zigzag deals each rank two distant chunks, which LASP-2 cannot scan; with linear-attention layers use auto, ring, ulysses or tokenring")
        return
    layout = sequence_layout(softmax_kernel(str(kind), m.layer_kinds))
    multiple = 2 * sp if layout == "zigzag" else sp
    if spec.data.seq_len % multiple:
        yield Problem("spec.data.seqLen", f"must be a multiple of {multiple} for the {layout} layout over {sp} sequence ranks; got {spec.data.seq_len}")


# ----------------------------------------------------------------------------- pydantic errors


def _problem(model: type[pydantic.BaseModel], err: dict[str, Any]) -> Problem:
    loc = err["loc"]
    path = _format_loc(loc)
    got = err.get("input")
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return Problem(path, "required field is missing")
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        allowed = ", ".join(sorted(f.alias or n for n, f in parent.model_fields.items())) if parent else "none"
        return Problem(path, f"unknown field; allowed here: {allowed}")
    if kind in ("enum", "literal_error"):
        return Problem(path, f"must be one of: {_choices(ctx.get('expected', ''))} (got {got!r})")
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(v for k, v in ctx.items() if k in ("ge", "gt", "le", "lt")))
        return Problem(path, f"must be {bounds[kind]} {limit} (got {got!r})")
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return Problem(path, f"must be an integer (got {got!r})")
    if kind in ("float_parsing", "float_type"):
        return Problem(path, f"must be a number (got {got!r})")
    if kind in ("bool_parsing", "bool_type"):
        return Problem(path, f"must be true or false (got {got!r})")
    if kind == "string_type" and len(loc) > 2 and loc[-2] in ("requests", "limits"):
        return Problem(path, f"must be a quantity: an integer or a string such as 8Gi (got {got!r})")
    if kind in ("string_type",):
        return Problem(path, f"must be a string (got {got!r})")
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return Problem(path, f"must be a mapping (got {type(got).__name__})")
    if kind == "list_type":
        return Problem(path, f"must be a list (got {type(got).__name__})")
    if kind == "too_long":
        return Problem(path, f"must have at most {ctx.get('max_length')} item(s) (got {len(got)})")
    if kind == "too_short":
        return Problem(path, f"must have at least {ctx.get('min_length')} item(s)")
    if kind == "string_pattern_mismatch" and path == "metadata.name":
        return Problem(path, f"must be {NAME_RULE} (got {got!r})")
    if kind == "string_pattern_mismatch" and len(loc) > 1 and loc[-2] == "networks":
        return Problem(path, f"must be {devices.NETWORK_FORM} (got {got!r})")
    if kind == "string_pattern_mismatch" and loc[:2] == ("spec", "readmit"):
        return Problem(path, f"must be a node name: lowercase letters, digits, '-' and '.' (got {got!r})")
    if kind == "string_pattern_mismatch":
        return Problem(path, f"must be a DNS label: lowercase letters, digits and '-' (got {got!r})")
    if kind in ("string_too_long", "string_too_short"):
        return Problem(path, f"{err['msg'].lower()} (got {got!r})")
    return Problem(path, err["msg"])


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def _choices(expected: str) -> str:
    return ", ".join(re.findall(r"'([^']*)'", expected)) or expected


def _model_at(model: type[pydantic.BaseModel], loc: tuple) -> type[pydantic.BaseModel] | None:
    """The model class that owns the field at ``loc`` (for listing allowed names)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not isinstance(current, type):
            continue
        field = next(
            (f for n, f in current.model_fields.items() if part in (n, f.alias)), None
        )
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, pydantic.BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """The model inside ``X | None``, ``list[X]`` or ``dict[str, X]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    if origin in (list, tuple):
        return _unwrap(typing.get_args(annotation)[0])
    if origin is dict:
        return _unwrap(typing.get_args(annotation)[1])
    return annotation


__all__ = ["Problem", "InvalidManifest", "load_documents", "parse", "validate", "check_schema", "check_spec", "check_resources"]
