"""Parallel degrees of one generation, validated on construction (torchtitan's ParallelDims)."""

from __future__ import annotations

import dataclasses
import itertools
import operator

#: Mesh axes from fastest- to slowest-varying rank coordinate.
AXES = ("tensor", "sequence", "data", "pipeline")


@dataclasses.dataclass(frozen=True)
class ParallelDims:
    """Degrees along each mesh axis.

    Ranks are laid out tensor-fastest, then sequence, data, pipeline:
    ``rank = ((p * data + d) * sequence + s) * tensor + t``. With tensor = pipeline = 1 this
    is the workers' ``rank = d * sp + s``. Consecutive ranks share the fastest links, so
    tensor and sequence groups land inside a node and pipeline stages span the slow ones.
    """

    data: int
    sequence: int = 1
    tensor: int = 1
    pipeline: int = 1

    def __post_init__(self) -> None:
        for axis in AXES:
            if getattr(self, axis) < 1:
                raise ValueError(f"{axis} degree must be >= 1, got {getattr(self, axis)}")

    @property
    def world_size(self) -> int:
        return self.data * self.sequence * self.tensor * self.pipeline

    @property
    def sequence_enabled(self) -> bool:
        return self.sequence > 1

    @property
    def tensor_enabled(self) -> bool:
        return self.tensor > 1

    @property
    def pipeline_enabled(self) -> bool:
        return self.pipeline > 1

    @property
    def layout(self) -> str:
        """Short text form, recorded with checkpoints: ``dp=2,sp=1``."""
        parts = [f"dp={self.data}", f"sp={self.sequence}"]
        parts += [f"{n}={d}" for n, d in (("tp", self.tensor), ("pp", self.pipeline)) if d > 1]
        return ",".join(parts)

    def rank(self, *, data: int = 0, sequence: int = 0, tensor: int = 0, pipeline: int = 0) -> int:
        return ((pipeline * self.data + data) * self.sequence + sequence) * self.tensor + tensor

    def coords(self, rank: int) -> dict[str, int]:
        """Inverse of :meth:`rank`: the rank's index along every axis."""
        out = {}
        for axis in AXES:
            rank, out[axis] = divmod(rank, getattr(self, axis))
        return out

    def groups(self, axis: str) -> list[list[int]]:
        """Ranks that communicate along ``axis``: all ranks equal in every other coordinate.

        ``groups("data")`` varies data only; gradients are averaged over data *and*
        sequence ranks, which :meth:`gradient_groups` gives.
        """
        return self._groups((axis,))

    def gradient_groups(self) -> list[list[int]]:
        return self._groups(("sequence", "data"))

    def _groups(self, axes: tuple[str, ...]) -> list[list[int]]:
        # Coordinates in rank order, slowest axis first: (pipeline, data, sequence, tensor).
        coords = itertools.product(*(range(getattr(self, a)) for a in reversed(AXES)))
        others = [len(AXES) - 1 - i for i, a in enumerate(AXES) if a not in axes]
        key = operator.itemgetter(*others) if others else (lambda c: ())
        found: dict = {}
        for r, c in enumerate(coords):
            found.setdefault(key(c), []).append(r)
        return list(found.values())
