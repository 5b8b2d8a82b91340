"""GPU catalog: what the planner assumes one GPU of each product can do.

Numbers are *sustained* figures, not datasheet peaks: the bf16 rate a transformer's matmuls
reach in practice (about 40-60 % of peak dense), the HBM a training process can use, and
the per-GPU bandwidth of the intra-node fabric (NVLink where there is one, PCIe otherwise).
``cost_per_hour`` is relative (H100 = 1.0) and only used to rank plans of equal speed.

A platform team extends or overrides entries through Helm values (``planner.gpuCatalog``),
which reach :meth:`Catalog.extended` as a plain mapping::

    planner:
      gpuCatalog:
        NVIDIA-GB200:            # matched against nvidia.com/gpu.product, case-insensitive
          tflops: 1100
          hbmGiB: 186
          hbmGBps: 8000
          linkGBps: 900
          costPerHour: 2.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class GpuType:
    """One GPU product as the cost model sees it."""

    #: Catalog key; also what plans print as the rank's GPU.
    name: str
    #: Sustained bf16 dense matmul rate, TFLOP/s.
    tflops: float
    #: Device memory, GiB.
    hbm_gib: float
    #: Device memory bandwidth, GB/s (optimizer step, which is memory-bound).
    hbm_gbps: float
    #: Per-GPU bandwidth to another GPU of the same node, GB/s each way.
    link_gbps: float
    #: Relative price per hour (H100 = 1.0).
    cost_per_hour: float = 1.0
    #: Lower-case substrings of ``nvidia.com/gpu.product`` values that mean this type.
    aliases: tuple[str, ...] = ()

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * 2**30)


#: Built-in entries. Aliases are tried longest first, so "a100-sxm4-40gb" beats "a100".
BUILTIN: tuple[GpuType, ...] = (
    GpuType("H200", 650, 141, 4800, 450, 1.3, ("h200",)),
    GpuType("H100", 600, 80, 3350, 450, 1.0, ("h100-80gb-hbm3", "h100-sxm", "h100")),
    GpuType("H100-PCIe", 450, 80, 2000, 64, 0.8, ("h100-pcie", "h100-nvl")),
    GpuType("A100-80GB", 230, 80, 2039, 300, 0.55, ("a100-sxm4-80gb", "a100-80gb", "a100")),
    GpuType("A100-40GB", 230, 40, 1555, 300, 0.45, ("a100-sxm4-40gb", "a100-40gb", "a100-pcie-40gb")),
    GpuType("L40S", 200, 48, 864, 25, 0.35, ("l40s",)),
    GpuType("L4", 60, 24, 300, 25, 0.12, ("l4",)),
    GpuType("A10G", 70, 24, 600, 25, 0.15, ("a10g",)),
    GpuType("V100", 90, 32, 900, 150, 0.25, ("v100",)),
    #: A host CPU standing in for a GPU: the embedded default's ranks.
    GpuType("cpu", 0.2, 64, 50, 10, 0.01, ("cpu",)),
)

#: Keys a Helm values entry may use, and the GpuType field each sets.
_VALUE_KEYS = {
    "tflops": "tflops",
    "hbmGiB": "hbm_gib",
    "hbmGBps": "hbm_gbps",
    "linkGBps": "link_gbps",
    "costPerHour": "cost_per_hour",
    "aliases": "aliases",
}


class UnknownGpu(LookupError):
    """A node reports a GPU product the catalog has no entry for."""


class Catalog:
    """Look GPU products up by name or by ``nvidia.com/gpu.product`` label value."""

    def __init__(self, types: tuple[GpuType, ...] = BUILTIN) -> None:
        self.types = {t.name: t for t in types}
        aliases = [(a.lower(), t) for t in types for a in (*t.aliases, t.name.lower())]
        self._aliases = sorted(aliases, key=lambda item: -len(item[0]))

    def lookup(self, product: str) -> GpuType:
        """The entry for an exact name, else the longest alias found in ``product``."""
        if product in self.types:
            return self.types[product]
        wanted = product.lower().replace("_", "-").replace(" ", "-")
        for alias, gpu in self._aliases:
            if alias in wanted:
                return gpu
        known = ", ".join(sorted(self.types))
        raise UnknownGpu(f"GPU product {product!r} is not in the catalog (known: {known}); add it under planner.gpuCatalog")

    def extended(self, values: Mapping[str, Mapping[str, Any]]) -> Catalog:
        """A catalog with ``values`` (Helm-values shape, see module doc) added or overriding."""
        types = dict(self.types)
        for name, entry in values.items():
            unknown = set(entry) - set(_VALUE_KEYS)
            if unknown:
                raise ValueError(f"planner.gpuCatalog.{name}: unknown keys {sorted(unknown)}; allowed: {sorted(_VALUE_KEYS)}")
            fields = {_VALUE_KEYS[k]: (tuple(v) if k == "aliases" else float(v)) for k, v in entry.items()}
            if name in types:
                types[name] = dataclasses.replace(types[name], **fields)
            else:
                missing = {"tflops", "hbmGiB", "hbmGBps", "linkGBps"} - set(entry)
                if missing:
                    raise ValueError(f"planner.gpuCatalog.{name}: a new GPU type needs {sorted(missing)}")
                types[name] = GpuType(name=name, **fields)
        return Catalog(tuple(types.values()))


DEFAULT_CATALOG = Catalog()
