"""Parallel plans and rank placement: pure functions of a spec and an inventory."""

from .catalog import DEFAULT_CATALOG, Catalog, GpuType, UnknownGpu
from .dims import ParallelDims
from .elastic import plan_for_capacity, replicas_for_capacity
from .inventory import Inventory, InventorySettings, NicClass, Node, inventory_from_nodelist, local_inventory
from .layout import Infeasible
from .plan import Plan, RankPlacement, plan_uniform
from .search import Alternative, SearchResult, SearchSettings, Settings, plan_job, search

__all__ = [
    "Alternative", "Catalog", "DEFAULT_CATALOG", "GpuType", "Infeasible", "Inventory", "InventorySettings",
    "NicClass", "Node", "ParallelDims", "Plan", "RankPlacement", "SearchResult", "SearchSettings", "Settings",
    "UnknownGpu", "inventory_from_nodelist", "local_inventory", "plan_for_capacity", "plan_job", "plan_uniform",
    "replicas_for_capacity", "search",
]
