"""Where a TrainingJob's files go: its checkpoints and its export, and the rules for their
paths and object-store URIs (shared with spec.model.from and spec.data)."""

from __future__ import annotations

import re
import urllib.parse
from typing import Annotated, Literal

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from .base import ApiModel

#: The name of a Secret or PersistentVolumeClaim: a DNS label of up to 63 characters.
DnsLabel63 = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_URI_FORMS = "a path, a file:// URI or s3://bucket/prefix"


def storage_uri(uri: str | None) -> str | None:
    """``uri`` if it is a path, a ``file://`` URI or ``s3://bucket[/prefix]`` naming no
    credentials (they come from credentialsSecret); else a clear error."""
    if uri is None or "://" not in uri or uri.startswith("file://"):
        return uri
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "s3":
        raise PydanticCustomError("storage_uri", f"must be {_URI_FORMS} (got {{got}})", {"got": repr(uri)})
    if "@" in parts.netloc or ":" in parts.netloc:
        raise PydanticCustomError("storage_uri", "must not carry credentials or a port: give keys in credentialsSecret "
                                  "and the server in endpoint (got {got})", {"got": repr(uri)})
    if parts.query or parts.fragment:
        raise PydanticCustomError("storage_uri", "must be s3://bucket/prefix without '?' or '#' (got {got})", {"got": repr(uri)})
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or re.fullmatch(r"[0-9.]+", bucket):
        raise PydanticCustomError("storage_uri", "s3 bucket {bucket} is not a valid bucket name: 3-63 lowercase letters, "
                                  "digits, '.' and '-', starting and ending with a letter or digit, no '..', not an IP address",
                                  {"bucket": repr(bucket)})
    return uri


def _endpoint(url: str | None) -> str | None:
    """``url`` if it is an http(s) server address without credentials, path or query."""
    if url is None:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or parts.path.strip("/") or parts.query:
        raise PydanticCustomError("endpoint", "must be an http:// or https:// server address such as "
                                  "https://s3.example.com:9000, without credentials or a path (got {got})", {"got": repr(url)})
    return url


class CheckpointSpec(ApiModel):
    """Where checkpoints go: a folder every rank mounts, or an object store (docs/jobs-on-kubernetes.md)."""

    uri: Annotated[str | None, AfterValidator(storage_uri)] = Field(
        default=None,
        description="Where checkpoints go: a directory (path or file:// URI) every rank mounts, or "
        "s3://bucket/prefix on S3 or an S3-compatible store (keys from credentialsSecret, never in "
        "the URI). Unset: the runner's work directory, or on Kubernetes the checkpoint volume's "
        "<namespace>/<name> folder.",
    )
    credentials_secret: DnsLabel63 | None = Field(
        default=None,
        description="With an s3:// uri: a Secret in the job's namespace whose keys become the "
        "environment of every rank (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally "
        "AWS_SESSION_TOKEN, AWS_DEFAULT_REGION). Unset: the ranks' own AWS credentials chain.",
    )
    endpoint: Annotated[str | None, AfterValidator(_endpoint)] = Field(
        default=None,
        description="With an s3:// uri: the URL of an S3-compatible server "
        "(https://host:port); unset: AWS S3.",
    )
    volume_claim: DnsLabel63 | None = Field(
        default=None,
        description="A PersistentVolumeClaim in the job's namespace mounted into every rank pod "
        "at the operator's checkpoint mount (/checkpoints by default) instead of its shared "
        "claim; ReadWriteMany, or ReadWriteOnce with every rank on one node. Not with s3://.",
    )
    interval_steps: int = Field(default=50, ge=1, description="Steps between checkpoints.")
    async_: bool = Field(
        default=True, alias="async", description="Write in the background after a host snapshot."
    )
    keep: int = Field(default=3, ge=1, description="Committed checkpoints to keep.")


class ExportSpec(ApiModel):
    """The model exported when the job completes, by rank 0 after the final commit (docs/models.md)."""

    format: Literal["hf"] = Field(default="hf", description="hf: the Hugging Face layout (transformers, vLLM, SGLang).")
    dir: Annotated[str | None, AfterValidator(storage_uri)] = Field(
        default=None, description="Where: a path, a file:// URI or s3://bucket/prefix (replaced if it exists); "
        "unset: <checkpoint directory>/export.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32", description="Tensor type of the safetensors.")
