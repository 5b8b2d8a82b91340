"""The custom resources' models (spec + status); the CRD YAML is generated from them."""

from .base import ApiModel, Condition, ObjectMeta
from .enums import (
    AttentionKind,
    ConditionType,
    DataSource,
    EventType,
    FailureAction,
    Phase,
    RankState,
    Reason,
    Runtime,
    SequenceKind,
    StragglerAction,
    SyntheticTask,
)
from .presets import PRESETS, ModelPreset
from .servingpool import ServingPool, ServingPoolSpec, ServingPoolStatus, validate_pool
from .trainingjob import GROUP, VERSION, StragglerPolicySpec, TrainingJob, TrainingJobSpec
from .trainingjobstatus import CheckpointRef, RankStatus, StragglerStatus, TrainingJobStatus
from .validation import InvalidManifest, Problem, load_documents, parse, validate

__all__ = [
    "ApiModel", "Condition", "ObjectMeta", "AttentionKind", "ConditionType", "DataSource",
    "EventType", "FailureAction", "Phase", "RankState", "Reason", "Runtime", "SequenceKind",
    "StragglerAction", "SyntheticTask", "PRESETS", "ModelPreset", "GROUP", "VERSION",
    "CheckpointRef", "RankStatus", "StragglerPolicySpec", "StragglerStatus", "TrainingJob", "TrainingJobSpec", "TrainingJobStatus",
    "InvalidManifest", "Problem", "load_documents", "parse", "validate",
    "ServingPool", "ServingPoolSpec", "ServingPoolStatus", "validate_pool",
]
