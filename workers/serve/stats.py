"""A replica's recent latencies and throughput, for ``/status`` (what the pool core reads).

Prometheus histograms answer "how many requests were slower than 0.5 s since the start";
the pool core wants "what is this replica's TTFT p99 right now". ``Window`` keeps the
samples of the last ``seconds`` (at most ``max_samples``) and gives percentiles of them;
``ReplicaStats`` holds the windows a replica reports.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable


class Window:
    """Samples of the last ``seconds``; percentiles by the nearest-rank method."""

    def __init__(self, seconds: float = 60.0, max_samples: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=max_samples)

    def add(self, value: float) -> None:
        self._samples.append((self._clock(), value))

    def values(self) -> list[float]:
        horizon = self._clock() - self.seconds
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        return [v for _, v in self._samples]

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0 < q <= 100) of the window, None when it is empty."""
        values = sorted(self.values())
        if not values:
            return None
        return values[max(0, math.ceil(q / 100 * len(values)) - 1)]

    def total(self) -> float:
        return sum(self.values())


class ReplicaStats:
    """TTFT and time per output token (TPOT) per request, generated tokens, over a window."""

    def __init__(self, seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.seconds = seconds
        self.ttft = Window(seconds, clock=clock)
        self.tpot = Window(seconds, clock=clock)
        self.tokens = Window(seconds, clock=clock)
        self.finished = 0
        self._started = clock()

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft.add(seconds)

    def generated(self, count: int) -> None:
        with self._lock:
            self.tokens.add(count)

    def request_done(self, *, first_token: float | None, last_token: float | None, output_tokens: int) -> None:
        """TPOT of a finished request: its decode time over its tokens after the first."""
        with self._lock:
            self.finished += 1
            if first_token is not None and last_token is not None and output_tokens > 1:
                self.tpot.add((last_token - first_token) / (output_tokens - 1))

    def summary(self) -> dict[str, object]:
        with self._lock:
            span = min(self.seconds, max(self._clock() - self._started, 1e-9))
            return {
                "ttftSeconds": {"p50": self.ttft.percentile(50), "p99": self.ttft.percentile(99)},
                "tpotSeconds": {"p50": self.tpot.percentile(50), "p99": self.tpot.percentile(99)},
                "tokensPerSecond": self.tokens.total() / span,
                "requestsFinished": self.finished,
            }
