"""Parallel plans and rank placement: pure functions of a spec and an inventory."""

from .dims import ParallelDims
from .plan import Plan, RankPlacement, plan_uniform

__all__ = ["ParallelDims", "Plan", "RankPlacement", "plan_uniform"]
