"""What one training step asks of the hardware: FLOPs, parameters and message bytes.

These are facts of the model and the batch, shared by the closed-form cost model
(``cost.py``) and the event simulator (``simulate.py``); the two differ in how they
compose them into a step, never in what one layer costs. Sizes are bf16 (2 bytes) unless
a name says otherwise. Formulas follow Narayanan et al. (Megatron-LM, 2021) and
Korthikanti et al. (activation recomputation, 2022), with flash attention (no S x S
scores stored).
"""

from __future__ import annotations

import dataclasses
import functools

from shardwright.operator.api import TrainingJobSpec
from shardwright.workers.config import ModelConfig

BF16 = 2


@dataclasses.dataclass(frozen=True)
class Workload:
    layers: int
    dim: int
    heads: int
    kv_heads: int
    ffn_dim: int
    vocab: int
    seq_len: int
    global_batch: int
    #: Layers with softmax attention (quadratic in the sequence); the rest are linear.
    softmax_layers: int

    @classmethod
    def from_spec(cls, spec: TrainingJobSpec) -> Workload:
        return cls.of_model(spec.model.resolve(), seq_len=spec.data.seq_len, global_batch=spec.data.global_batch)

    @classmethod
    def of_model(cls, m: ModelConfig, *, seq_len: int = 1, global_batch: int = 1) -> Workload:
        """A resolved model's dimensions (a served model's, with no batch of its own)."""
        return cls(
            layers=m.layers, dim=m.dim, heads=m.heads, kv_heads=m.kv_heads, ffn_dim=m.ffn_dim,
            vocab=m.vocab_size, seq_len=seq_len, global_batch=global_batch,
            softmax_layers=sum(k == "softmax" for k in m.layer_kinds),
        )

    # ------------------------------------------------------------------ parameters

    @functools.cached_property
    def kv_dim(self) -> int:
        return self.dim // self.heads * self.kv_heads

    @functools.cached_property
    def layer_params(self) -> int:
        attention = 2 * self.dim * self.dim + 2 * self.dim * self.kv_dim
        return attention + 3 * self.dim * self.ffn_dim

    @functools.cached_property
    def embedding_params(self) -> int:
        """Input embedding (first stage) and, as many again, the output head (last stage)."""
        return self.vocab * self.dim

    def stage_params(self, layers: int, first: bool, last: bool) -> int:
        return layers * self.layer_params + (first + last) * self.embedding_params

    # ------------------------------------------------------------------ FLOPs

    @functools.cached_property
    def softmax_fraction(self) -> float:
        return self.softmax_layers / self.layers

    def layer_flops(self, micro_batch: int, recompute: bool) -> float:
        """Forward + backward FLOPs of one average layer over one micro-batch.

        Matmuls cost 2 FLOPs per parameter per token forward; causal attention adds
        2 * S * dim per token (QK^T and AV, half the square). Backward is twice forward;
        recomputation runs the forward once more.
        """
        tokens = micro_batch * self.seq_len
        forward = tokens * (2 * self.layer_params + self.softmax_fraction * 2 * self.seq_len * self.dim)
        return forward * (4 if recompute else 3)

    def head_flops(self, micro_batch: int) -> float:
        """Forward + backward of the output projection and loss on the last stage."""
        return 3 * 2 * micro_batch * self.seq_len * self.vocab * self.dim

    # ------------------------------------------------------------------ messages (bytes)

    def activation_bytes(self, micro_batch: int) -> float:
        """One micro-batch's hidden states at a stage boundary, whole (before any split)."""
        return micro_batch * self.seq_len * self.dim * BF16

    def tensor_allreduces(self, recompute: bool) -> int:
        """All-reduces of activations per layer: 2 forward, 2 backward, 2 more to recompute."""
        return 6 if recompute else 4

    def sequence_bytes_per_layer(self, micro_batch: int, sequence: int) -> float:
        """Bytes one sequence rank sends per layer, forward + backward.

        Softmax layers pass K and V around the ring (sequence - 1 hops), and dK, dV back
        in the backward: 3 chunk transfers per hop. Linear-attention layers (LASP-2)
        exchange only the [heads, d, d] fp32 states, negligible beside that.
        """
        if sequence == 1:
            return 0.0
        chunk = 2 * micro_batch * self.seq_len // sequence * self.kv_dim * BF16
        states = self.heads * (self.dim // self.heads) ** 2 * 4
        return self.softmax_fraction * 3 * (sequence - 1) * chunk + (1 - self.softmax_fraction) * 2 * (sequence - 1) * states
