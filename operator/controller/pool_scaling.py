"""The autoscaler of a ServingPool: replicas from a load signal, against a target per replica.

HPA's rule on LLM signals: ``desired = ceil(routable * signal / target)`` with a 10 %
tolerance band, clamped to the unified role's ``minReplicas .. maxReplicas``.

- ``queue-depth``: requests waiting per routable replica (vLLM's ``num_requests_waiting``);
- ``ttft``: the worst routable replica's TTFT p99, seconds;
- ``tokens-per-second``: generated tokens per second per routable replica.

Scaling up happens at once; scaling down only to the highest recommendation of the last
``scaleDownStabilizationSeconds`` (HPA's stabilisation window), so one quiet moment does not
drop replicas a burst needs again. With ``idleToZero`` the pool goes to 0 after
``idleSeconds`` with no request waiting, running or held, and back to 1 when one is held.
Pure: the clock is ``observed.now``.
"""

from __future__ import annotations

import dataclasses
import math

from shardwright.operator.api.servingpool import RoleName, ScalingSignal, ServingPoolSpec

from .pool_observed import PoolMemory, PoolObserved

#: A signal within this fraction of its target changes nothing (HPA's default tolerance).
TOLERANCE = 0.1


@dataclasses.dataclass(frozen=True)
class Scale:
    replicas: int
    memory: PoolMemory
    #: Why the count changed from the last pass (None when it did not).
    reason: str | None = None


def desired_replicas(spec: ServingPoolSpec, observed: PoolObserved, memory: PoolMemory) -> Scale:
    auto = spec.autoscaling
    if auto is None:
        return Scale(spec.replicas, dataclasses.replace(memory, desired=spec.replicas))
    role = next(r for r in spec.roles if r.name is RoleName.UNIFIED)
    low, high = max(role.min_replicas, 1), role.max_replicas
    now = observed.now
    current = memory.desired if memory.desired is not None else spec.replicas
    routable = [r for r in observed.replicas if r.routable]
    busy = observed.held_requests > 0 or any(r.load for r in observed.replicas if r.alive)
    last_busy = now if busy or memory.last_busy is None else memory.last_busy

    raw, why = current, None
    signal = _signal(auto.signal, routable)
    if signal is not None and routable:
        ratio = signal / auto.target
        if abs(ratio - 1) > TOLERANCE:
            raw = math.ceil(len(routable) * ratio)
            why = f"{auto.signal} {signal:.3g} per replica against a target of {auto.target:g} on {len(routable)} routable"
    raw = min(max(raw, low), high)
    window = [(t, n) for t, n in memory.recommendations if (now - t).total_seconds() < auto.scale_down_stabilization_seconds]
    window.append((now, raw))
    if current == 0:
        desired = low if observed.held_requests else 0  # at zero: only a held request wakes the pool
        why = f"{observed.held_requests} request(s) held with no replica" if desired else None
    elif raw >= current:
        desired = raw
    else:
        desired = max(n for _, n in window)  # the highest recent recommendation: no flapping
        if desired < current:
            why = f"{why}; lowest for the last {auto.scale_down_stabilization_seconds} s"
    if auto.idle_to_zero and role.min_replicas == 0 and not busy and (now - last_busy).total_seconds() >= auto.idle_seconds:
        desired, why = 0, f"no request for {auto.idle_seconds} s"
    memory = dataclasses.replace(memory, recommendations=tuple(window), desired=desired, last_busy=last_busy)
    return Scale(desired, memory, why if desired != current else None)


def _signal(signal: ScalingSignal, routable) -> float | None:
    if not routable:
        return None
    if signal is ScalingSignal.QUEUE_DEPTH:
        return sum(r.waiting for r in routable) / len(routable)
    if signal is ScalingSignal.TTFT:
        values = [r.ttft_p99 for r in routable if r.ttft_p99 is not None]
        return max(values) if values else None
    values = [r.tokens_per_second for r in routable if r.tokens_per_second is not None]
    return sum(values) / len(routable) if values else None
