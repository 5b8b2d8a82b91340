"""The plain HTTP side of the operator tests' Kubernetes API: resource paths, a small JSON
client with the admin token, and the operator's client that records every request it sends
(kubeapi.py builds the tests' cluster on these)."""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.cluster.controlplane import ControlPlane

TJ = "shardwright.io/v1alpha1/trainingjobs"
PODS = "v1/pods"
SERVICES = "v1/services"
EVENTS = "v1/events"
NODES = "v1/nodes"
LEASES = "coordination.k8s.io/v1/leases"
WEBHOOKS = "admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
CLUSTER_SCOPED = (NODES, WEBHOOKS)


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")


def path(resource: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    """``v1/pods`` → ``/api/v1/namespaces/<ns>/pods[/<name>[/<sub>]]``."""
    group_version, plural = resource.rsplit("/", 1)
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    scope = f"/namespaces/{namespace}" if namespace and resource not in CLUSTER_SCOPED else ""
    return f"{prefix}{scope}/{plural}" + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


class Api:
    """A small blocking JSON client with the admin token (thread-safe: urllib3's pool)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.server = cp.server
        self.http = urllib3.PoolManager(maxsize=8, ca_certs=str(cp.pki.ca_cert), timeout=urllib3.Timeout(total=30))
        self.headers = {"Authorization": f"Bearer {cp.token}", "Accept": "application/json"}

    def request(self, method: str, where: str, body: Any = None, *, params: dict[str, str] | None = None,
                content_type: str = "application/json") -> dict[str, Any]:
        url = self.server + where + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = json.dumps(body).encode() if body is not None else None
        r = self.http.request(method, url, body=data, headers={**self.headers, "Content-Type": content_type})
        if r.status >= 300:
            raise ApiError(method, where, r.status, r.data.decode(errors="replace"))
        return json.loads(r.data) if r.data else {}

    def get(self, where: str, **params: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", where, params=params or None)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def merge(self, where: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", where, patch, content_type="application/merge-patch+json")


@dataclasses.dataclass(frozen=True)
class Request:
    """One request the operator's client sent, and the HTTP status it got."""

    method: str
    path: str
    body: Any
    status: int


class RecordingClient(client.ApiClient):
    """The operator's Kubernetes client, keeping every request it sends."""

    def __init__(self, configuration: client.Configuration) -> None:
        super().__init__(configuration)
        self.requests: list[Request] = []

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        where = url.removeprefix(self.configuration.host)
        try:
            response = super().call_api(method, url, header_params, body, post_params, _request_timeout)
        except ApiException as e:
            self.requests.append(Request(method, where, body, e.status))
            raise
        self.requests.append(Request(method, where, body, response.status))
        return response
