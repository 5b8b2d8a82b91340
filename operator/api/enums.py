"""Every closed vocabulary of the API: phases, condition types and reasons, event reasons, kinds.

They are ``StrEnum``s so they serialise as their plain value in YAML, JSON and the CRD schema.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """Where a TrainingJob is in its life; ``Complete`` and ``Failed`` are terminal."""

    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    COMPLETE = "Complete"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.COMPLETE, Phase.FAILED)


class ConditionType(StrEnum):
    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    COMPLETE = "Complete"
    FAILED = "Failed"
    #: Running, but slower than it should be: a straggling rank (see docs/stragglers.md).
    DEGRADED = "Degraded"


class Reason(StrEnum):
    """CamelCase, machine-readable reasons for conditions and events."""

    CREATED = "Created"
    GENERATION_STARTED = "GenerationStarted"
    RANKS_STARTING = "RanksStarting"
    RANKS_RUNNING = "RanksRunning"
    RANK_FAILED = "RankFailed"
    RESTARTED_FROM_CHECKPOINT = "RestartedFromCheckpoint"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    FAILED_BY_RULE = "FailedByRule"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    STOPPED = "Stopped"
    TRAINING_COMPLETE = "TrainingComplete"
    RANKS_LOST = "RanksLost"
    NO_PROGRESS = "ProgressDeadlineExceeded"
    CHECKPOINT_REJECTED = "CheckpointRejected"
    RESIZING = "Resizing"
    RESHARDED = "Resharded"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    STRAGGLER_DETECTED = "StragglerDetected"
    STRAGGLER_MITIGATED = "StragglerMitigated"
    STRAGGLER_CLEARED = "StragglerCleared"
    NODE_AVOIDED = "NodeAvoided"
    NODE_CORDONED = "NodeCordoned"
    CORDON_FAILED = "CordonFailed"
    NODE_READMITTED = "NodeReadmitted"
    READMIT_IGNORED = "ReadmitIgnored"
    PREVIOUS_JOB_TERMINATING = "PreviousJobTerminating"
    API_REJECTED = "ApiRejected"


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class AttentionKind(StrEnum):
    """The token mixer of a layer: softmax attention or a linear-attention recurrence."""

    SOFTMAX = "softmax"
    GATED_DELTA = "gated-delta"
    KDA = "kda"
    KLA = "kla"
    GDN2 = "gdn2"


class SequenceKind(StrEnum):
    """How a sequence-parallel group splits attention; ``auto`` picks per layer kind."""

    AUTO = "auto"
    ULYSSES = "ulysses"
    RING = "ring"
    ZIGZAG = "zigzag"
    TOKENRING = "tokenring"
    LASP2 = "lasp2"


class DataSource(StrEnum):
    """Where samples come from (docs/data.md)."""

    SYNTHETIC = "synthetic"
    FILE = "file"
    TEXT = "text"
    TOKENS = "tokens"


class SyntheticTask(StrEnum):
    """Deterministic tasks defined by the global sample index (see workers/data.py)."""

    MARKOV_COPY = "markov-copy"


class Runtime(StrEnum):
    """How ranks are launched on Kubernetes; the embedded default always uses local Ray."""

    TORCH = "torch"
    RAY = "ray"


class StragglerAction(StrEnum):
    REPORT = "report"
    REBALANCE = "rebalance"
    REPLACE = "replace"


class FailureAction(StrEnum):
    """What a failure rule does with a matching rank failure."""

    RETRY = "Retry"
    FAIL = "Fail"


class RankState(StrEnum):
    """What a backend observed about one rank process."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
