"""Per-step section times of one rank, measured without synchronisation of their own.

Sections (``SECTIONS``): ``data`` (building the rank's micro-batches), ``forward``,
``backward`` (local gradient computation only), ``optimizer`` (clipping and the update),
and ``wait``: time this rank spent blocked on its peers. Wait has two parts:

- DDP's gradient all-reduce runs *inside* the last micro-batch's backward. A comm hook
  notes when this rank's last gradient bucket was handed to the all-reduce; the rest of
  ``backward()`` after that moment is waiting for the other ranks' buckets
  (``GradientWaitHook``). On a balanced job it is the transfer itself (small on one host).
- The step-facts all-reduce (loss, stop flag, these times; one per batch of short steps,
  see ``stepfacts.facts_batch``) runs in the background during the next steps, and its result
  is awaited at the end of the next batch; the wait is timed and reported with the step
  that waited, since a step's times travel in that very all-reduce.
  A rank that is slow *after* its gradients (its optimizer step, or an injected slowdown)
  therefore makes the others wait in the next gradient all-reduce or in this wait.

The clock is ``time.monotonic`` on CPU. Nothing here calls ``torch.cuda.synchronize``:
a GPU trainer would record ``torch.cuda.Event(enable_timing=True)`` pairs instead and read
them one step later, once the facts all-reduce has ordered the stream anyway.

``relative_scores`` is the rank's own live view of the straggler score (a Prometheus
gauge): the fastest rank's median over the recent steps over this rank's, both over the
same steps, so the host's drift moves them alike. The operator's detector
(``operator/controller/stragglers.py``) scores every step against a reference at the
host's current speed, with hysteresis, and decides what is flagged.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

#: Section names, in the order they are carried in the step-facts all-reduce.
SECTIONS = ("data", "forward", "backward", "optimizer", "wait")
#: Sections that are this rank's own work (everything but ``wait``).
COMPUTE = SECTIONS[:4]
#: Steps the reported throughput is averaged over.
THROUGHPUT_WINDOW = 10
#: Steps a rank's own live straggler-score gauge (``relative_scores``) is taken over.
SCORE_WINDOW = 20


class SectionTimer:
    """Accumulates seconds per section over one step; ``take`` returns and resets them.

    Besides wall time per section it keeps ``busy``: the CPU time this thread spent in the
    compute sections. The straggler detector compares ranks by busy time, since wall time
    on a shared host also counts the moments the scheduler gave the core to someone else
    (on a GPU the CUDA-event time of the compute plays this role: device time).
    """

    def __init__(self) -> None:
        self.totals = dict.fromkeys(SECTIONS, 0.0)
        self.busy = 0.0

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        began, cpu = time.monotonic(), time.thread_time()
        try:
            yield
        finally:
            self.totals[name] += time.monotonic() - began
            self.busy += time.thread_time() - cpu

    def add(self, name: str, seconds: float) -> None:
        self.totals[name] += max(seconds, 0.0)

    @property
    def compute(self) -> float:
        return sum(self.totals[name] for name in COMPUTE)

    def stretch(self, factor: float) -> None:
        """Scale the compute sections (an injected slowdown is a slower rank, every section)."""
        for name in COMPUTE:
            self.totals[name] *= factor
        self.busy *= factor

    def take(self) -> tuple[dict[str, float], float]:
        """This step's wall seconds per section and busy (CPU) seconds; starts the next step."""
        out, busy = self.totals, self.busy
        self.totals, self.busy = dict.fromkeys(SECTIONS, 0.0), 0.0
        return out, busy


class GradientWaitHook:
    """DDP comm hook: the default all-reduce, noting when the last bucket became ready.

    Registered with ``ddp.register_comm_hook(hook, GradientWaitHook.hook)``; ``backward``
    seconds after ``last_ready`` are time spent waiting for the other ranks' gradients.
    ``on_last`` is called at that moment (the rank says it now waits in a collective).
    """

    def __init__(self, group=None, on_last: Callable[[], None] | None = None) -> None:
        self.group, self.on_last = group, on_last
        self.last_ready: float | None = None

    @staticmethod
    def hook(state: GradientWaitHook, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        if bucket.is_last():
            state.last_ready = time.monotonic()
            if state.on_last is not None:
                state.on_last()
        return allreduce_hook(state.group, bucket)


def per_sample(compute: Sequence[float], samples: Sequence[int]) -> list[float]:
    """Compute seconds per sample of every rank (uneven shares make raw times incomparable)."""
    return [c / max(n, 1) for c, n in zip(compute, samples)]


def relative_scores(history: Sequence[Sequence[float]]) -> list[float]:
    """``history[t][r]``: rank r's per-sample compute at step t. Score of rank r: the minimum
    over ranks of their median over the history, divided by r's own median (1.0 = fastest)."""
    if not history:
        return []
    medians = [statistics.median(column) for column in zip(*history)]
    reference = min(medians)
    return [reference / m if m > 0 else 1.0 for m in medians]
