"""``--inject`` texts: a fault counted in steps into its generation (``into``) fires that many
steps after the step its generation resumed at; bad texts are refused naming what is allowed."""

from __future__ import annotations

import pytest

from shardwright.workers.faults import Fault, parse_fault


def test_into_counts_from_the_step_the_generation_resumed_at():
    fault = parse_fault("kill:rank=3:into=5:gen=4")
    assert fault == Fault(kind="kill", rank=3, into=5, gen=4)
    assert fault.fires(rank=3, step=45, generation=4, start=40)
    assert fault.fires(rank=3, step=5, generation=4)  # resumed at 0 (the default)
    assert not fault.fires(rank=3, step=45, generation=3, start=40)
    assert not fault.fires(rank=2, step=45, generation=4, start=40)
    assert not fault.fires(rank=3, step=44, generation=4, start=40)
    step = parse_fault("hang:rank=0:step=30:gen=2")
    assert step.fires(rank=0, step=30, generation=2, start=20) and not step.fires(rank=0, step=50, generation=2, start=20)


@pytest.mark.parametrize("text, says", [
    ("kill:rank=1", "kill needs step=N or into=N (steps into its generation), not both"),
    ("hang:rank=1:step=3:into=2", "hang needs step=N or into=N (steps into its generation), not both"),
    ("kill:rank=1:into=0", "into input should be greater than or equal to 1"),
    ("kill:rank=1:into=2:during=checkpoint", "during=checkpoint needs step=N (the checkpoint's step), not into"),
    ("corrupt-checkpoint:into=2", "'into=2' is not one of corrupt-checkpoint's settings (gen=..., step=...)"),
    ("kill:step=3", "kill needs rank"),
])
def test_bad_texts_are_refused_naming_what_is_allowed(text, says):
    with pytest.raises(ValueError) as refused:
        parse_fault(text)
    assert says in str(refused.value), str(refused.value)
