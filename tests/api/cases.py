"""Malformed TrainingJob manifests, each with the field path and key phrase of its problem.

Shared by the validator tests and the CRD-schema tests: cases marked ``schema=True`` are
wrong at the level of one field's type, bound, enum or presence, so the API server's CRD
schema must reject them too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tests.support.manifests import DROP, edited


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    edits: dict[str, Any]
    path: str
    phrase: str
    #: Rejected by the CRD's structural schema as well (type, bound, enum, required).
    schema: bool = False

    @property
    def doc(self) -> dict[str, Any]:
        return edited(self.edits)


SPEC_FIELDS = (
    "activeDeadlineSeconds, checkpoint, data, elastic, evaluation, export, failurePolicy, model, parallelism, "
    "readmit, runtime, stragglerPolicy, suspend, training, ttlSecondsAfterFinished, workers"
)
WORKER_FIELDS = "command, device, gpuType, image, name, network, nodeSelector, ranksPerReplica, replicas, resources, template"

CASES = [
    # wrong types
    Bad("steps-word", {"spec.training.steps": "five"}, "spec.training.steps", "must be an integer (got 'five')", True),
    Bad("steps-quoted-number", {"spec.training.steps": "5"}, "spec.training.steps", "must be an integer (got '5')", True),
    Bad("heads-bool", {"spec.model.heads": True}, "spec.model.heads", "must be an integer (got True)", True),
    Bad("suspend-string", {"spec.suspend": "yes"}, "spec.suspend", "must be true or false", True),
    Bad("lr-word", {"spec.training.lr": "fast"}, "spec.training.lr", "must be a number (got 'fast')", True),
    Bad("workers-mapping", {"spec.workers": {"replicas": 2}}, "spec.workers", "must be a list (got dict)", True),
    Bad("model-list", {"spec.model": ["tiny"]}, "spec.model", "must be a mapping (got list)", True),
    Bad("cpu-list", {"spec.workers[0].resources.requests.cpu": [1]}, "spec.workers[0].resources.requests.cpu", "must be a quantity", True),
    Bad("cpu-float", {"spec.workers[0].resources.requests.cpu": 1.5}, "spec.workers[0].resources.requests.cpu", "must be a quantity: an integer or a string", True),
    # resources as pod validation sees them
    Bad("cpu-word", {"spec.workers[0].resources.requests.cpu": "abc"}, "spec.workers[0].resources.requests.cpu", "must be a quantity: a non-negative number"),
    Bad("memory-bad-suffix", {"spec.workers[0].resources.limits.memory": "2GB"}, "spec.workers[0].resources.limits.memory", "such as 500m, 8Gi or 1e3 (got '2GB')"),
    Bad("cpu-negative", {"spec.workers[0].resources.requests.cpu": -1}, "spec.workers[0].resources.requests.cpu", "must be a quantity, 0 or more (got -1)"),
    Bad("steps-beyond-int64", {"spec.training.steps": 2**63}, "spec.training.steps", "must be between -2^63 and 2^63-1"),
    Bad("resource-unknown", {"spec.workers[0].resources.requests.gpu": 1}, "spec.workers[0].resources.requests.gpu", "unknown resource name; allowed: cpu, memory"),
    Bad("resource-reserved", {"spec.workers[0].resources.limits": {"kubernetes.io/gpu": 1}}, "spec.workers[0].resources.limits.kubernetes.io/gpu", "reserved"),
    Bad("gpu-fraction", {"spec.workers[0].resources.limits": {"nvidia.com/gpu": "500m"}}, "spec.workers[0].resources.limits.nvidia.com/gpu", "must be a whole number"),
    Bad("extended-beyond-int64-thousandths", {"spec.workers[0].resources.limits": {"example.com/fpga": 9223372036854776}},
        "spec.workers[0].resources.limits.example.com/fpga", "must be at most 9223372036854775 for example.com/fpga"),
    Bad("gpu-request-without-limit", {"spec.workers[0].resources.requests": {"cpu": 1, "nvidia.com/gpu": 1}}, "spec.workers[0].resources.requests.nvidia.com/gpu", "needs limits.nvidia.com/gpu equal"),
    Bad("request-over-limit", {"spec.workers[0].resources.limits.memory": "1Gi"}, "spec.workers[0].resources.requests.memory", "must be <= limits.memory (1Gi); got 2Gi"),
    # GPUs and the RDMA network (api/devices.py)
    Bad("gpus-not-ranks-per-pod", {"spec.workers[0].ranksPerReplica": 2, "spec.workers[0].resources.limits": {"nvidia.com/gpu": 1}, "spec.workers[0].resources.requests": {}},
        "spec.workers[0].resources.limits.nvidia.com/gpu", "must equal ranksPerReplica (2): each rank gets one GPU"),
    Bad("gpus-on-a-cpu-group", {"spec.workers[0].device": "cpu", "spec.workers[0].resources.limits": {"nvidia.com/gpu": 1}, "spec.workers[0].resources.requests": {}},
        "spec.workers[0].resources.limits.nvidia.com/gpu", "a device: cpu group asks for no GPU"),
    Bad("template-gpus-not-ranks-per-pod", {"spec.workers[0].resources": DROP, "spec.workers[0].template": {"spec": {"containers": [{"name": "ranks", "resources": {"limits": {"nvidia.com/gpu": 4}}}]}}},
        "spec.workers[0].template.spec.containers[0].resources.limits.nvidia.com/gpu", "must equal ranksPerReplica (1)"),
    Bad("gpu-type-on-a-cpu-group", {"spec.workers[0].device": "cpu", "spec.workers[0].gpuType": "NVIDIA-H100-80GB-HBM3"}, "spec.workers[0].gpuType", "only for device: gpu groups"),
    Bad("device-unknown", {"spec.workers[0].device": "tpu"}, "spec.workers[0].device", "must be one of: gpu, cpu (got 'tpu')", True),
    Bad("product-selector-contradicts-gpu-type", {"spec.workers[0].gpuType": "NVIDIA-H100-80GB-HBM3", "spec.workers[0].nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L40S"}},
        "spec.workers[0].nodeSelector.nvidia.com/gpu.product", "contradicts gpuType (NVIDIA-H100-80GB-HBM3)"),
    Bad("template-product-selector-contradicts-gpu-type", {"spec.workers[0].gpuType": "NVIDIA-H100-80GB-HBM3", "spec.workers[0].template": {"spec": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L40S"}}}},
        "spec.workers[0].template.spec.nodeSelector.nvidia.com/gpu.product", "contradicts gpuType"),
    Bad("rdma-gpu", {"spec.workers[0].network.rdmaResources": {"nvidia.com/gpu": 1}}, "spec.workers[0].network.rdmaResources.nvidia.com/gpu", "follows ranksPerReplica"),
    Bad("rdma-standard-name", {"spec.workers[0].network.rdmaResources": {"memory": 1}}, "spec.workers[0].network.rdmaResources.memory", "must be an extended resource <domain>/<name>"),
    Bad("rdma-zero", {"spec.workers[0].network.rdmaResources": {"rdma/hca_shared_devices_a": 0}}, "spec.workers[0].network.rdmaResources.rdma/hca_shared_devices_a", "must be >= 1", True),
    Bad("rdma-in-resources-too", {"spec.workers[0].network.rdmaResources": {"rdma/ib": 1}, "spec.workers[0].resources.limits": {"rdma/ib": 1}, "spec.workers[0].resources.requests": {"rdma/ib": 1}},
        "spec.workers[0].resources.requests.rdma/ib", "set in spec.workers[0].network.rdmaResources.rdma/ib too"),
    Bad("network-name", {"spec.workers[0].network.networks": ["IB_net"]}, "spec.workers[0].network.networks[0]", "must be a Multus network: [namespace/]name[@interface]", True),
    Bad("network-twice", {"spec.workers[0].network.networks": ["ib", "ib"]}, "spec.workers[0].network.networks[1]", "duplicate network 'ib'"),
    Bad("networks-annotation-too", {"spec.workers[0].network.networks": ["ib"], "spec.workers[0].template": {"metadata": {"annotations": {"k8s.v1.cni.cncf.io/networks": "ib"}}}},
        "spec.workers[0].template.metadata.annotations.k8s.v1.cni.cncf.io/networks", "set from spec.workers[0].network.networks too"),
    Bad("ipc-lock-dropped", {"spec.workers[0].network.ipcLock": True, "spec.workers[0].template": {"spec": {"containers": [{"name": "ranks", "securityContext": {"capabilities": {"drop": ["IPC_LOCK"]}}}]}}},
        "spec.workers[0].template.spec.containers[0].securityContext.capabilities.drop", "drops IPC_LOCK, which spec.workers[0].network.ipcLock adds"),
    # counts out of range
    Bad("replicas-zero", {"spec.workers[0].replicas": 0}, "spec.workers[0].replicas", "must be >= 1 (got 0)", True),
    Bad("steps-negative", {"spec.training.steps": -1}, "spec.training.steps", "must be >= 1 (got -1)", True),
    Bad("global-batch-zero", {"spec.data.globalBatch": 0}, "spec.data.globalBatch", "must be >= 1 (got 0)", True),
    Bad("lr-zero", {"spec.training.lr": 0}, "spec.training.lr", "must be > 0", True),
    Bad("ranks-per-replica-huge", {"spec.workers[0].ranksPerReplica": 65}, "spec.workers[0].ranksPerReplica", "must be <= 64", True),
    Bad("no-worker-groups", {"spec.workers": []}, "spec.workers", "at least 1 item", True),
    # elastic bounds
    Bad("elastic-min-over-max", {"spec.elastic": {"minReplicas": 3, "maxReplicas": 2}}, "spec.elastic.minReplicas", "must be <= maxReplicas (2); got 3"),
    Bad("replicas-below-elastic", {"spec.elastic": {"minReplicas": 3, "maxReplicas": 4}}, "spec.workers", "outside elastic bounds [3, 4]"),
    # unknown enum values
    Bad("attention-unknown", {"spec.model.attention": "mamba"}, "spec.model.attention", "must be one of: softmax, gated-delta, kda, kla, gdn2 (got 'mamba')", True),
    Bad("layer-pattern-unknown", {"spec.model.layerPattern": ["softmax", "rnn"]}, "spec.model.layerPattern[1]", "must be one of: softmax,", True),
    Bad("sequence-kind-unknown", {"spec.parallelism.sequence.kind": "spiral"}, "spec.parallelism.sequence.kind", "must be one of: auto, ulysses, ring, zigzag, tokenring, lasp2", True),
    Bad("runtime-unknown", {"spec.runtime": "slurm"}, "spec.runtime", "must be one of: torch, ray (got 'slurm')", True),
    Bad("straggler-action-unknown", {"spec.stragglerPolicy.action": "kill"}, "spec.stragglerPolicy.action", "must be one of: report, rebalance, replace", True),
    Bad("failure-action-unknown", {"spec.failurePolicy.rules": [{"action": "Maybe", "exitCodes": [1]}]}, "spec.failurePolicy.rules[0].action", "must be one of: Retry, Fail", True),
    # missing required fields
    Bad("missing-steps", {"spec.training.steps": DROP}, "spec.training.steps", "required field is missing", True),
    Bad("missing-workers", {"spec.workers": DROP}, "spec.workers", "required field is missing", True),
    Bad("missing-model", {"spec.model": DROP}, "spec.model", "required field is missing", True),
    Bad("missing-replicas", {"spec.workers[0].replicas": DROP}, "spec.workers[0].replicas", "required field is missing", True),
    Bad("missing-name", {"metadata.name": DROP}, "metadata.name", "required field is missing"),
    # unknown fields, with the allowed names listed
    Bad("unknown-top-level", {"specification": {}}, "specification", "unknown field; allowed here: apiVersion, kind, metadata, spec, status"),
    Bad("unknown-in-spec", {"spec.replicas": 2}, "spec.replicas", f"unknown field; allowed here: {SPEC_FIELDS}"),
    Bad("unknown-in-worker", {"spec.workers[0].gpus": 8}, "spec.workers[0].gpus", f"unknown field; allowed here: {WORKER_FIELDS}"),
    Bad("unknown-in-sequence", {"spec.parallelism.sequence.size": 2}, "spec.parallelism.sequence.size", "unknown field; allowed here: degree, kind"),
    Bad("unknown-in-checkpoint", {"spec.checkpoint.every": 5}, "spec.checkpoint.every", "allowed here: async, credentialsSecret, endpoint, intervalSteps, keep, uri, volumeClaim"),
    # parallel degrees
    Bad("ulysses-degree-vs-heads", {"spec.workers[0].replicas": 3, "spec.data.seqLen": 66, "spec.parallelism.sequence": {"degree": 3, "kind": "ulysses"}},
        "spec.parallelism.sequence.degree", "ulysses splits heads: the degree must divide heads (4)"),
    Bad("degree-vs-world", {"spec.parallelism.sequence.degree": 3}, "spec.parallelism.sequence.degree", "must divide the world size (2 ranks"),
    Bad("data-times-sequence", {"spec.parallelism.data": 1}, "spec.parallelism.data", "data x sequence must equal the world size (2); got 1 x 1"),
    Bad("tensor-parallel", {"spec.parallelism.tensor": 2}, "spec.parallelism.tensor", "not supported"),
    Bad("pipeline-parallel", {"spec.parallelism.pipeline": 2}, "spec.parallelism.pipeline", "not supported"),
    Bad("lasp2-with-softmax", {"spec.parallelism.sequence": {"degree": 2, "kind": "lasp2"}}, "spec.parallelism.sequence.kind", "lasp2 is for linear-attention layers"),
    Bad("seq-len-vs-degree", {"spec.data.seqLen": 66, "spec.parallelism.sequence.degree": 2}, "spec.data.seqLen", "must be a multiple of 4 for the zigzag layout over 2 sequence ranks"),
    Bad("seq-len-vs-contiguous-degree", {"spec.workers[0].replicas": 3, "spec.data.seqLen": 64, "spec.data.globalBatch": 3, "spec.data.microBatch": 3, "spec.parallelism.sequence": {"degree": 3, "kind": "ring"}},
        "spec.data.seqLen", "must be a multiple of 3 for the contiguous layout over 3 sequence ranks"),
    Bad("zigzag-with-linear-layers", {"spec.model.attention": "gated-delta", "spec.parallelism.sequence": {"degree": 2, "kind": "zigzag"}},
        "spec.parallelism.sequence.kind", "LASP-2 cannot scan"),
    # batches and data
    Bad("global-batch-below-dp", {"spec.data.globalBatch": 1, "spec.data.microBatch": 1}, "spec.data.globalBatch", "at least the data-parallel degree (2)"),
    Bad("micro-over-global", {"spec.data.microBatch": 32}, "spec.data.microBatch", "must be <= globalBatch (16); got 32"),
    Bad("file-without-path", {"spec.data.source": "file"}, "spec.data.path", "required when source is file"),
    Bad("path-with-synthetic", {"spec.data.path": "/data/tokens.bin"}, "spec.data.path", "only used with source: file"),
    # failure rules
    Bad("rule-bad-regex", {"spec.failurePolicy.rules": [{"action": "Retry", "message": "NCCL ("}]}, "spec.failurePolicy.rules[0].message", "not a valid regular expression"),
    Bad("rule-matches-nothing", {"spec.failurePolicy.rules": [{"action": "Fail"}]}, "spec.failurePolicy.rules[0]", "needs exitCodes or message"),
    Bad("backoff-max-below-initial", {"spec.failurePolicy.backoff": {"initialSeconds": 10, "maxSeconds": 5}}, "spec.failurePolicy.backoff.maxSeconds", "must be >= initialSeconds"),
    Bad("cordon-without-replace", {"spec.stragglerPolicy": {"action": "rebalance", "cordon": True}}, "spec.stragglerPolicy.cordon", "only used with action: replace"),
    # names and identity
    Bad("duplicate-group-names", {"spec.workers": [{"replicas": 1}, {"replicas": 1}]}, "spec.workers[1].name", "duplicate group name 'worker'"),
    Bad("bad-group-name", {"spec.workers[0].name": "GPU_Workers"}, "spec.workers[0].name", "must be a DNS label", True),
    Bad("bad-metadata-name", {"metadata.name": "Tiny_Train"}, "metadata.name", "must be a DNS-1035 label"),
    Bad("digit-first-metadata-name", {"metadata.name": "7b-run"}, "metadata.name", "starting with a letter"),
    Bad("long-metadata-name", {"metadata.name": "x" * 64}, "metadata.name", "at most 63 characters"),
    Bad("wrong-api-version", {"apiVersion": "shardwright.io/v1"}, "apiVersion/kind", "must be one of: shardwright.io/v1alpha1 TrainingJob, shardwright.io/v1alpha1 ServingPool (got shardwright.io/v1 TrainingJob)"),
    Bad("wrong-kind", {"kind": "Job"}, "apiVersion/kind", "(got shardwright.io/v1alpha1 Job)"),
    # model dimensions
    Bad("heads-vs-dim", {"spec.model.heads": 3, "spec.model.kvHeads": 1}, "spec.model.heads", "must divide dim (64); got 3"),
    Bad("kv-heads-vs-heads", {"spec.model.kvHeads": 3}, "spec.model.kvHeads", "must divide heads (4); got 3"),
    Bad("odd-head-dim", {"spec.model.dim": 72, "spec.model.heads": 8, "spec.model.kvHeads": 2}, "spec.model.heads", "even for rotary positions; got 72/8"),
]
