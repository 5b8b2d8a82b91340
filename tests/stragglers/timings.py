"""Synthetic step timings for detector tests: seeded noise, a slow rank, shares, hiccups."""

from __future__ import annotations

import random
from collections.abc import Callable

from shardwright.operator.controller import StepTiming

#: Busy seconds per sample of a healthy rank (8 samples: 0.2 s steps).
PER_SAMPLE = 0.025


def steps(
    count: int,
    world: int = 2,
    *,
    first: int = 1,
    seed: int = 0,
    noise: float = 0.08,
    slow: dict[int, float] | None = None,
    slow_from: int = 0,
    samples: tuple[int, ...] | None = None,
    hiccups: tuple[int, ...] = (),
    host: Callable[[int], float] | None = None,
) -> list[StepTiming]:
    """``count`` steps from ``first``: every rank's busy time is PER_SAMPLE x samples x
    (1 + |gauss noise|); ``slow[rank]`` multiplies it from step ``slow_from``; at ``hiccups``
    every rank is 3x slower (the host was busy); ``host(step)`` multiplies every rank's
    time at that step (the host's speed drifting)."""
    rng = random.Random(seed)
    samples = samples or (8,) * world
    out = []
    for step in range(first, first + count):
        busy = []
        for r in range(world):
            t = PER_SAMPLE * samples[r] * (1 + abs(rng.gauss(0, noise)))
            if slow and r in slow and step >= slow_from:
                t *= slow[r]
            if step in hiccups:
                t *= 3
            if host:
                t *= host(step)
            busy.append(t)
        longest = max(busy)
        out.append(StepTiming(step, tuple(busy), tuple(longest - b for b in busy), samples, tuple(busy)))
    return out
