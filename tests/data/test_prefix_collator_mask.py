"""The prompt + suffix format (PaliGemma) keeps earlier turns as context and refuses a mask it cannot honour."""

from __future__ import annotations

from vlm_lightning.data.prefix_collator import prefix_prompt, unlearnable_turns
from vlm_lightning.data.records import Record


def _record(turns: int) -> Record:
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]
    return Record("r1", ["x.png"], messages, [f"A{turns - 1}"], meta={"source": "d.jsonl", "line": 3})


def test_earlier_answers_stay_in_the_prompt() -> None:
    assert prefix_prompt(_record(2)) == "<image>Be brief.\nQ0\nA0\nQ1"
    assert prefix_prompt(_record(1)) == "<image>Be brief.\nQ0"  # single turn: as before


def test_mask_assistant_on_multi_turn_is_refused_with_what_to_set() -> None:
    reason = unlearnable_turns(_record(2), "assistant")
    assert (
        reason
        and "d.jsonl:3" in reason
        and "has 2 assistant turns" in reason
        and "--data.mask last" in reason
    )
    assert unlearnable_turns(_record(2), "last") is None
    assert unlearnable_turns(_record(1), "assistant") is None  # one answer: both strategies agree
