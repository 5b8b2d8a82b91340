"""The reconcile core: pure functions from (spec, plan, status, observed) to actions."""

from .actions import Action, Event, ReplaceRank, Result, SetShares, StartGeneration, StopGeneration
from .conditions import set_condition
from .observed import Observed, Progress, RankObservation, StepTiming, parse_time, rfc3339
from .readmit import readmit
from .reconcile import decide, reconcile
from .render import JobRef, worker_config

__all__ = [
    "Action", "Event", "ReplaceRank", "Result", "SetShares", "StartGeneration", "StopGeneration", "Observed", "Progress",
    "RankObservation", "StepTiming", "parse_time", "rfc3339", "decide", "readmit", "reconcile", "JobRef", "worker_config",
    "set_condition",
]
