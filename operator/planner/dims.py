"""Parallel degrees of one generation, validated on construction (torchtitan's ParallelDims)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ParallelDims:
    """Degrees along each mesh axis; ranks are laid out sequence-fastest: rank = d * sp + s."""

    data: int
    sequence: int = 1
    tensor: int = 1
    pipeline: int = 1

    def __post_init__(self) -> None:
        for axis in ("data", "sequence", "tensor", "pipeline"):
            if getattr(self, axis) < 1:
                raise ValueError(f"{axis} degree must be >= 1, got {getattr(self, axis)}")

    @property
    def world_size(self) -> int:
        return self.data * self.sequence * self.tensor * self.pipeline

    @property
    def sequence_enabled(self) -> bool:
        return self.sequence > 1

    @property
    def layout(self) -> str:
        """Short text form, recorded with checkpoints: ``dp=2,sp=1``."""
        parts = [f"dp={self.data}", f"sp={self.sequence}"]
        parts += [f"{n}={d}" for n, d in (("tp", self.tensor), ("pp", self.pipeline)) if d > 1]
        return ",".join(parts)
