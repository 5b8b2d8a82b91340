"""What one serving replica sustains on a GPU type: a roofline model of the engine's iteration.

Mélange (Griggs et al., 2024) profiles each GPU type's throughput per request size at a
latency SLO; on the operator's side there is no GPU to profile, so this model derives it
from the catalog (``catalog.py``: sustained bf16 rate, HBM size and bandwidth) the training
planner already uses. A replica of ``tensor`` GPUs runs continuous batching with chunked
prefill (what the built-in engine, vLLM and SGLang do):

- a decode iteration of ``b`` requests at mean context ``L`` reads the weights once and
  every request's KV, and computes 2 FLOPs per parameter per token plus attention over
  ``L``: ``t(b) = max(bytes / bandwidth, flops / rate)``;
- a request's prefill of ``I`` tokens is compute-bound: ``p = (2 P I + 2 layers I² dim) / rate``;
- the KV of every running request stays resident for its whole length: ``b (I + O) kv <=``
  the HBM left after the weights (``memory_fraction`` of it, vLLM's gpu-memory-utilization);
- in steady state with prefills interleaved, a replica finishes
  ``r(b) = b / (O t(b) + b p)`` requests a second, each output token takes
  ``TPOT(b) = t(b) + b p / O`` and the first one about ``TTFT(b) = p + t(b)``.

``r`` grows with ``b`` and so does ``TPOT``, so the capacity at the SLO is ``r`` at the
largest batch that meets the TPOT and TTFT targets and fits in memory. The SLO is met as a
mean; ``PerfSettings.utilization`` keeps headroom for bursts (planned at 90 % of it).
Tensor parallelism multiplies rate and bandwidth by the degree times ``tensor_efficiency``
(the all-reduces). These are figures for choosing a mix, not predictions of a benchmark:
docs/serving-mix.md says what they leave out.
"""

from __future__ import annotations

import dataclasses

from .catalog import GpuType
from .workload import Workload


@dataclasses.dataclass(frozen=True)
class PerfSettings:
    #: Share of HBM the engine takes (weights, KV cache), as vLLM's default 0.9.
    memory_fraction: float = 0.9
    #: Rate and bandwidth kept per GPU at tensor degree > 1.
    tensor_efficiency: float = 0.9
    #: Share of its capacity at the SLO a replica is planned to carry.
    utilization: float = 0.9
    #: Most requests one replica decodes together (vLLM's max-num-seqs default).
    max_batch: int = 256


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """The served transformer in the figures the model needs."""

    params: int
    layers: int
    dim: int
    #: KV-cache bytes per token (keys and values of every layer).
    kv_bytes_per_token: int
    bytes_per_value: int

    @classmethod
    def of(cls, w: Workload, bytes_per_value: int) -> ServedModel:
        params = w.layers * w.layer_params + 2 * w.embedding_params
        return cls(params, w.layers, w.dim, 2 * w.layers * w.kv_dim * bytes_per_value, bytes_per_value)

    @property
    def weight_bytes(self) -> int:
        return self.params * self.bytes_per_value


@dataclasses.dataclass(frozen=True)
class Replica:
    """One replica's hardware: ``tensor`` GPUs of one type on one node."""

    gpu: GpuType
    tensor: int = 1

    @property
    def cost_per_hour(self) -> float:
        return self.gpu.cost_per_hour * self.tensor

    @property
    def label(self) -> str:
        return self.gpu.name if self.tensor == 1 else f"{self.gpu.name} x{self.tensor}"

    def kv_room(self, model: ServedModel, s: PerfSettings) -> float:
        """KV bytes left after the weights (negative: the weights do not fit)."""
        return self.tensor * self.gpu.hbm_bytes * s.memory_fraction - model.weight_bytes

    def scale(self, s: PerfSettings) -> float:
        return self.tensor * (1.0 if self.tensor == 1 else s.tensor_efficiency)


@dataclasses.dataclass(frozen=True)
class Capacity:
    """A replica's steady state on one request size at the SLO."""

    requests_per_second: float
    batch: int
    tpot_s: float
    ttft_s: float


def iteration_seconds(model: ServedModel, replica: Replica, batch: int, context: float, s: PerfSettings) -> float:
    """One decode iteration of ``batch`` requests with ``context`` tokens each, on average."""
    scale = replica.scale(s)
    read = model.weight_bytes + batch * context * model.kv_bytes_per_token
    flops = batch * (2 * model.params + 4 * model.layers * context * model.dim)
    return max(read / (replica.gpu.hbm_gbps * 1e9 * scale), flops / (replica.gpu.tflops * 1e12 * scale))


def prefill_seconds(model: ServedModel, replica: Replica, tokens: int, s: PerfSettings) -> float:
    flops = 2 * model.params * tokens + 2 * model.layers * tokens * tokens * model.dim
    return flops / (replica.gpu.tflops * 1e12 * replica.scale(s))


def capacity(model: ServedModel, replica: Replica, input_tokens: int, output_tokens: int,
             tpot_s: float | None, ttft_s: float | None, s: PerfSettings = PerfSettings()) -> Capacity | None:
    """The most requests of this size a second the replica serves within the targets
    (planned at ``s.utilization`` of it); None when not even one request meets them."""
    room = replica.kv_room(model, s)
    fits = int(room // ((input_tokens + output_tokens) * model.kv_bytes_per_token)) if room > 0 else 0
    p = prefill_seconds(model, replica, input_tokens, s)
    best = None
    for batch in range(1, min(fits, s.max_batch) + 1):
        t = iteration_seconds(model, replica, batch, input_tokens + output_tokens / 2, s)
        tpot, ttft = t + batch * p / output_tokens, p + t
        if (tpot_s is not None and tpot > tpot_s) or (ttft_s is not None and ttft > ttft_s):
            break  # both grow with the batch
        best = Capacity(s.utilization * batch / (output_tokens * t + batch * p), batch, tpot, ttft)
    return best
