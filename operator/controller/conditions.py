"""metav1.Condition bookkeeping: one entry per type, transition time moves only on change."""

from __future__ import annotations

from shardwright.operator.api import Condition, ConditionType


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
    status: bool,
    reason: str,
    message: str,
    *,
    now: str,
    observed_generation: int | None,
) -> list[Condition]:
    """A new list with condition ``type_`` set; others untouched."""
    value = "True" if status else "False"
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type == type_:
            found = True
            moved = cond.status != value
            cond = Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=now if moved else cond.last_transition_time,
                observed_generation=observed_generation,
            )
        out.append(cond)
    if not found:
        out.append(
            Condition(
                type=type_, status=value, reason=reason, message=message,
                last_transition_time=now, observed_generation=observed_generation,
            )
        )
    return out


def is_true(conditions: list[Condition], type_: ConditionType) -> bool:
    return any(c.type == type_ and c.status == "True" for c in conditions)
