"""What a job that runs the user's own program (``spec.workers[].command``) cannot ask for.

The program does its own data loading and parallelism through ``shardwright.sdk``, so the
settings that steer the built-in trainer's data pipeline and sequence sharding are refused
here, each naming its field, instead of being silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterator

from .enums import StragglerAction


def problems(spec) -> Iterator[tuple[str, str]]:
    """``(field path, message)`` for every setting that cannot work with ``spec``'s command."""
    commands = [g.command for g in spec.workers]
    if all(c is None for c in commands):
        return
    for i, command in enumerate(commands[1:], start=1):
        if command != commands[0]:
            yield (f"spec.workers[{i}].command",
                   f"must equal spec.workers[0].command ({commands[0]}): every rank of a job runs one program; got {command}")
    if spec.parallelism.sequence.degree != 1:
        yield ("spec.parallelism.sequence.degree",
               "sequence parallelism belongs to the built-in trainer; with a command your program shards its own data: allowed 1")
    if spec.parallelism.auto:
        yield ("spec.parallelism.auto", "the planner lays out the built-in trainer; with a command remove it (data parallel over every rank)")
    if spec.straggler_policy.action is not StragglerAction.REPORT:
        yield ("spec.stragglerPolicy.action",
               f"a command reads its own data, so samples cannot be moved between its ranks: allowed: report; got {spec.straggler_policy.action}")
    for field, name, what in (("spec.evaluation", spec.evaluation, "evaluation"), ("spec.export", spec.export, "the export at completion"),
                              ("spec.training.lora", spec.training.lora, "LoRA")):
        if name is not None:
            yield (field, f"{what} is done by the built-in trainer, which a command replaces: remove it (your program does its own)")
