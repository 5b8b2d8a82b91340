"""``shardwright plot``: a job's loss, throughput and restarts against steps, as a PNG.

Reads the job directory's step log (rank 0's loss and tokens/s per step, the held-out
loss of the steps evaluated after: spec.evaluation) and events.
Each generation is drawn as its own segment, so the steps a restart trains again show as
an overlap, and a dashed line marks where each generation after the first began (restart,
resize or resume). Needs matplotlib (the ``bench`` extra); importing this module without
it raises ImportError, which the CLI turns into one line.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, whatever the environment says

import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen

from shardwright.operator.jobdir import JobDir  # noqa: E402

#: Events whose message names a generation that started because of a failure.
_RESTART = re.compile(r"^Generation (\d+) ")


def write(job: JobDir, out: Path) -> None:
    """Draw ``job``'s step log into ``out``; ValueError when it has no steps yet."""
    lines = job.steps()
    if not lines:
        raise ValueError(f"no steps logged yet in {job.path / 'steps.jsonl'}")
    restarted = {
        int(m.group(1)) for e in job.events()
        if e.get("reason") == "RestartedFromCheckpoint" and (m := _RESTART.match(e.get("message", "")))
    }
    by_generation: dict[int, list[dict]] = {}
    for line in lines:
        by_generation.setdefault(line["generation"], []).append(line)

    fig, (loss_ax, rate_ax, restart_ax) = plt.subplots(3, 1, sharex=True, figsize=(8, 7), height_ratios=(3, 2, 1))
    for gen, rows in sorted(by_generation.items()):
        steps = [r["step"] for r in rows]
        loss_ax.plot(steps, [r["loss"] for r in rows], label=f"generation {gen}")
        if evaluated := [r for r in rows if "evalLoss" in r]:
            loss_ax.plot([r["step"] for r in evaluated], [r["evalLoss"] for r in evaluated], "o", markersize=4,
                         label=f"generation {gen} held-out")
        rate_ax.plot(steps, [r["tokensPerSecond"] for r in rows])
        # Restarts so far: the generations up to this one that began after a failure.
        restart_ax.plot(steps, [sum(g <= gen for g in restarted)] * len(steps))
        if gen > min(by_generation):
            why = "restart" if gen in restarted else "resume or resize"
            for ax in (loss_ax, rate_ax, restart_ax):
                ax.axvline(steps[0] - 1, color="grey", linestyle="--", linewidth=0.8)
            loss_ax.annotate(f"gen {gen} ({why})", (steps[0] - 1, 1), xycoords=("data", "axes fraction"),
                             rotation=90, va="top", ha="right", fontsize=8, color="grey")

    name = job.manifest().get("metadata", {}).get("name", job.path.name)
    loss_ax.set_title(f"{name}: {len(by_generation)} generation(s), {len(restarted)} restart(s)")
    loss_ax.set_ylabel("loss (nats)")
    loss_ax.legend(fontsize=8)
    rate_ax.set_ylabel("tokens/s")
    restart_ax.set_ylabel("restarts")
    restart_ax.set_xlabel("step")
    restart_ax.yaxis.get_major_locator().set_params(integer=True)
    for ax in (loss_ax, rate_ax, restart_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
