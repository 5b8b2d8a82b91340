"""What a pod's spec asks of its node, resolved as the kubelet resolves it: volumes into
folders (emptyDir, secret, configMap, projected service-account token, downwardAPI, a claim's
PersistentVolume), env (values, downward API fields, secret and configMap references,
``envFrom``, ``$(VAR)``), and the pod's hostname."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from kubernetes import client

from . import sandbox
from .podstate import Container, Pod

#: HOME and default working directory of a pod's processes (a folder of the pod's own).
POD_HOME = "/home/shardwright-pod"


def read_json(response) -> Any:
    """The body of an API response read with ``_preload_content=False``."""
    return json.loads(response.data)


class Resolver:
    """Reads what a pod refers to from the API server; one per node agent."""

    def __init__(self, core: client.CoreV1Api, state: Path, api_port: int, host_ip: str) -> None:
        self.core = core
        self.state = state
        self.api_port = api_port
        self.host_ip = host_ip

    def volumes(self, pod: Pod) -> dict[str, Path]:
        """Every volume of the pod as a folder (raises while a referenced object is missing)."""
        return {v["name"]: self.volume(pod, v) for v in pod.body["spec"].get("volumes") or []}

    def volume(self, pod: Pod, v: dict[str, Any]) -> Path:
        ns = pod.key[0]
        folder = pod.dir / "volumes" / v["name"]
        if "persistentVolumeClaim" in v:
            return self._claim(ns, v["persistentVolumeClaim"]["claimName"])
        if "hostPath" in v:
            return Path(v["hostPath"]["path"])
        folder.mkdir(parents=True, exist_ok=True)
        if "secret" in v:
            secret = read_json(self.core.read_namespaced_secret(v["secret"]["secretName"], ns, _preload_content=False))
            write_items(folder, {k: base64.b64decode(d) for k, d in (secret.get("data") or {}).items()}, v["secret"].get("items"))
        elif "configMap" in v:
            cm = read_json(self.core.read_namespaced_config_map(v["configMap"]["name"], ns, _preload_content=False))
            write_items(folder, {k: d.encode() for k, d in (cm.get("data") or {}).items()}, v["configMap"].get("items"))
        elif "projected" in v:
            for source in v["projected"].get("sources") or []:
                self._projected(pod, folder, source)
        elif "downwardAPI" in v:
            self._projected(pod, folder, {"downwardAPI": v["downwardAPI"]})
        return folder

    def _claim(self, ns: str, name: str) -> Path:
        """A bound claim's volume: its PersistentVolume's hostPath, else a folder per volume
        under the agent's state (shared by every process-backed node, as ReadWriteMany)."""
        claim = read_json(self.core.read_namespaced_persistent_volume_claim(name, ns, _preload_content=False))
        volume = claim["spec"].get("volumeName")
        if not volume:
            raise RuntimeError(f"PersistentVolumeClaim {ns}/{name} is not bound")
        pv = read_json(self.core.read_persistent_volume(volume, _preload_content=False))
        folder = Path(pv["spec"]["hostPath"]["path"]) if pv["spec"].get("hostPath") else self.state / "volumes" / volume
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _projected(self, pod: Pod, folder: Path, source: dict[str, Any]) -> None:
        ns, meta = pod.key[0], pod.body["metadata"]
        if (sat := source.get("serviceAccountToken")) is not None:
            request = {"spec": {"audiences": [sat["audience"]] if sat.get("audience") else None,
                                "expirationSeconds": sat.get("expirationSeconds", 3607),
                                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}}}
            sa = pod.body["spec"].get("serviceAccountName") or "default"
            token = read_json(self.core.create_namespaced_service_account_token(sa, ns, request, _preload_content=False))
            write_items(folder, {sat["path"]: token["status"]["token"].encode()}, None)
        elif (ref := source.get("configMap")) is not None:
            cm = read_json(self.core.read_namespaced_config_map(ref["name"], ns, _preload_content=False))
            write_items(folder, {k: d.encode() for k, d in (cm.get("data") or {}).items()}, ref.get("items"))
        elif (ref := source.get("secret")) is not None:
            secret = read_json(self.core.read_namespaced_secret(ref["name"], ns, _preload_content=False))
            write_items(folder, {k: base64.b64decode(d) for k, d in (secret.get("data") or {}).items()}, ref.get("items"))
        elif (ref := source.get("downwardAPI")) is not None:
            for item in ref.get("items") or []:
                if "fieldRef" in item:
                    write_items(folder, {item["path"]: self._field(pod, item["fieldRef"]["fieldPath"]).encode()}, None)

    def _field(self, pod: Pod, path: str) -> str:
        meta, spec = pod.body["metadata"], pod.body["spec"]
        if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        return {
            "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
            "spec.nodeName": pod.node, "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.podIP": pod.ip, "status.podIPs": pod.ip, "status.hostIP": self.host_ip, "status.hostIPs": self.host_ip,
            "metadata.labels": "\n".join(f'{k}="{v}"' for k, v in (meta.get("labels") or {}).items()),
        }.get(path, "")

    def env(self, pod: Pod, c: Container) -> dict[str, str]:
        ns = pod.key[0]
        env = {"PATH": sandbox.project_path(), "HOME": POD_HOME, "HOSTNAME": hostname(pod.body),
               "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.api_port),
               "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port),
               "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
        (pod.dir / "home").mkdir(exist_ok=True)
        for source in c.spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if ref := source.get("configMapRef"):
                data = (read_json(self.core.read_namespaced_config_map(ref["name"], ns, _preload_content=False)).get("data") or {})
            else:
                ref = source["secretRef"]
                data = {k: base64.b64decode(v).decode() for k, v in (read_json(self.core.read_namespaced_secret(ref["name"], ns, _preload_content=False)).get("data") or {}).items()}
            env.update({prefix + k: v for k, v in data.items()})
        for item in c.spec.get("env") or []:
            if "valueFrom" not in item:
                env[item["name"]] = expand(item.get("value", ""), env)
                continue
            src = item["valueFrom"]
            if "fieldRef" in src:
                env[item["name"]] = self._field(pod, src["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                data = read_json(self.core.read_namespaced_secret(ref["name"], ns, _preload_content=False)).get("data") or {}
                env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                env[item["name"]] = (read_json(self.core.read_namespaced_config_map(ref["name"], ns, _preload_content=False)).get("data") or {})[ref["key"]]
            elif "resourceFieldRef" in src:
                ref = src["resourceFieldRef"]
                kind, _, res = ref["resource"].partition(".")
                env[item["name"]] = str((c.spec.get("resources") or {}).get(kind + "s", {}).get(res, "0"))
        return env


def hostname(body: dict[str, Any]) -> str:
    return (body.get("spec") or {}).get("hostname") or body["metadata"]["name"][:63]


def expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` as the kubelet expands it; ``$$(VAR)`` stays literal."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def write_items(folder: Path, data: dict[str, bytes], items: list[dict[str, Any]] | None) -> None:
    chosen = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
    for key, rel in chosen.items():
        if key in data:
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[key])
