"""Routing as a pipeline of small plugins: filter -> score -> pick (llm-d's endpoint picker).

A *filter* drops endpoints a request must not go to, a *scorer* gives each remaining one a
score in [0, 1] and carries a weight, a *picker* chooses from the weighted sums. Adding a
signal adds a scorer, not a branch. ``pipeline_for(policy)`` builds the three policies:

- ``prefix-aware``: endpoints within 8 requests of the least loaded, then prefix overlap
  (weight 2) + load (weight 1), the highest sum wins;
- ``least-load``: load alone;
- ``round-robin``: no scorers, endpoints in turn.

The prefix scorer is llm-d's *approximate* one: it remembers which endpoint it sent each
prompt block to (``kv_cache.hash_blocks``, the names the replicas' caches use) and scores an
endpoint by the share of the prompt's leading blocks it has seen. Nothing here does I/O.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Sequence
from typing import Protocol

from ..kv_cache import hash_blocks


@dataclasses.dataclass(frozen=True)
class Candidate:
    """What plugins see of one endpoint at the moment of a pick."""

    name: str
    routable: bool
    #: Requests the router has in flight there plus the replica's own waiting queue.
    load: int


@dataclasses.dataclass(frozen=True)
class Pick:
    """One request as the plugins see it."""

    prompt_token_ids: Sequence[int]
    #: Endpoints this request already failed on (a retry goes elsewhere).
    exclude: frozenset[str] = frozenset()


class Filter(Protocol):
    name: str

    def keep(self, pick: Pick, c: Candidate) -> bool: ...


class Scorer(Protocol):
    name: str
    weight: float

    def score(self, pick: Pick, candidates: Sequence[Candidate]) -> dict[str, float]: ...


class Picker(Protocol):
    name: str

    def choose(self, candidates: Sequence[Candidate], scores: dict[str, float]) -> Candidate: ...


# ----------------------------------------------------------------------------- filters


class RoutableFilter:
    """Registered, warmed and not routed away (``Endpoints`` decides; here it is a flag)."""

    name = "routable"

    def keep(self, pick: Pick, c: Candidate) -> bool:
        return c.routable


class NotTriedFilter:
    """A retry or a migration goes to an endpoint this request has not failed on."""

    name = "not-tried"

    def keep(self, pick: Pick, c: Candidate) -> bool:
        return c.name not in pick.exclude


class BalanceFilter:
    """Drops endpoints with ``max_imbalance`` more requests than the least loaded one, so a
    hot prefix cannot pile every request onto one replica (the prefix score alone would)."""

    name = "balance"

    def __init__(self, max_imbalance: int = 8) -> None:
        self.max_imbalance = max_imbalance
        self._floor = 0

    def prepare(self, candidates: Sequence[Candidate]) -> None:
        self._floor = min((c.load for c in candidates), default=0)

    def keep(self, pick: Pick, c: Candidate) -> bool:
        return c.load <= self._floor + self.max_imbalance


# ----------------------------------------------------------------------------- scorers


class LoadScorer:
    """Fewer requests queued or running there scores higher: ``1 / (1 + load)``."""

    name = "load"

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def score(self, pick: Pick, candidates: Sequence[Candidate]) -> dict[str, float]:
        return {c.name: 1.0 / (1 + c.load) for c in candidates}


class PrefixScorer:
    """Share of the prompt's leading full blocks last sent to each endpoint (routing history)."""

    name = "prefix"

    def __init__(self, block_size: int, weight: float = 2.0, capacity: int = 100_000) -> None:
        self.block_size, self.weight, self.capacity = block_size, weight, capacity
        #: block hash -> endpoints it was sent to; least recently used first.
        self._seen: collections.OrderedDict[bytes, set[str]] = collections.OrderedDict()

    def score(self, pick: Pick, candidates: Sequence[Candidate]) -> dict[str, float]:
        hashes = hash_blocks(pick.prompt_token_ids, self.block_size)
        if not hashes:
            return {c.name: 0.0 for c in candidates}
        out = {}
        for c in candidates:
            run = next((i for i, h in enumerate(hashes) if c.name not in self._seen.get(h, ())), len(hashes))
            out[c.name] = run / len(hashes)  # a prefix: the cache holds leading blocks only
        return out

    def routed(self, pick: Pick, endpoint: str) -> None:
        """Remember that ``pick``'s prompt went to ``endpoint`` (its cache now holds the blocks)."""
        for h in hash_blocks(pick.prompt_token_ids, self.block_size):
            self._seen.setdefault(h, set()).add(endpoint)
            self._seen.move_to_end(h)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def forget(self, endpoint: str) -> None:
        """``endpoint`` is gone: its cache with it."""
        for names in self._seen.values():
            names.discard(endpoint)


# ----------------------------------------------------------------------------- pickers


class MaxScorePicker:
    """The highest weighted score; ties go round the tied endpoints in turn."""

    name = "max-score"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[Candidate], scores: dict[str, float]) -> Candidate:
        best = max(scores[c.name] for c in candidates)
        tied = [c for c in candidates if scores[c.name] >= best - 1e-9]
        return tied[next(self._turn) % len(tied)]


class RoundRobinPicker:
    name = "round-robin"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[Candidate], scores: dict[str, float]) -> Candidate:
        return candidates[next(self._turn) % len(candidates)]


# ----------------------------------------------------------------------------- the pipeline


@dataclasses.dataclass
class Pipeline:
    filters: list[Filter]
    scorers: list[Scorer]
    picker: Picker

    def pick(self, pick: Pick, candidates: Sequence[Candidate]) -> Candidate | None:
        """The endpoint for ``pick``, None when every one is filtered out."""
        kept = sorted(candidates, key=lambda c: c.name)
        for f in self.filters:  # in order: a filter sees only what the ones before it kept
            if isinstance(f, BalanceFilter):
                f.prepare(kept)
            kept = [c for c in kept if f.keep(pick, c)]
        if not kept:
            return None
        total = dict.fromkeys((c.name for c in kept), 0.0)
        for scorer in self.scorers:
            for name, s in scorer.score(pick, kept).items():
                total[name] += scorer.weight * s
        chosen = self.picker.choose(kept, total)
        for scorer in self.scorers:
            if isinstance(scorer, PrefixScorer):
                scorer.routed(pick, chosen.name)
        return chosen

    def forget(self, endpoint: str) -> None:
        for scorer in self.scorers:
            if isinstance(scorer, PrefixScorer):
                scorer.forget(endpoint)


def pipeline_for(policy: str, *, block_size: int) -> Pipeline:
    filters: list[Filter] = [RoutableFilter(), NotTriedFilter()]
    if policy == "prefix-aware":
        return Pipeline([*filters, BalanceFilter()], [PrefixScorer(block_size), LoadScorer()], MaxScorePicker())
    if policy == "least-load":
        return Pipeline(filters, [LoadScorer()], MaxScorePicker())
    if policy == "round-robin":
        return Pipeline(filters, [], RoundRobinPicker())
    raise ValueError(f"unknown routing policy {policy!r}; allowed: prefix-aware, least-load, round-robin")
