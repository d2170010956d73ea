"""Assistant-only label masking as pure functions over rendered chat text.

A conversation rendered by the family's chat template is cut into segments; each segment is either
context (never learned) or an assistant answer plus its end-of-turn token (learned). Tokenizing the
segments one after another gives exactly the tokens the model sees at inference: the prompt is
tokenized alone there too, then the model generates the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from vlm_lightning.errors import UserError

MaskStrategy = Literal["assistant", "last"]
Render = Callable[[list[dict], bool], str]


class TemplateMismatchError(UserError, ValueError):
    """The chat template does not render prompts as prefixes of the full conversation."""


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; ``learn`` marks answer + end-of-turn spans."""

    text: str
    learn: bool


@dataclass(frozen=True)
class SegmentedConversation:
    """Segments of one conversation and the index of the segment generation starts from."""

    segments: list[Segment]
    generation_cut: int  # segments[:generation_cut] is the prompt for the last answer


def segment_conversation(
    messages: Sequence[dict],
    render: Render,
    end_of_turn: str,
    strategy: MaskStrategy = "assistant",
    answer_of: Callable[[dict], str] = lambda m: m["content"],
) -> SegmentedConversation:
    """Cut a conversation into context / learned segments.

    ``render(messages, add_generation_prompt)`` renders text with the family's template. Every assistant
    turn is cut out as its own segment, from the end of its generation prompt to the end of the
    end-of-turn token that follows the answer, whatever the strategy: the strategy decides only which of
    them are learned (``last``: the final one), never where the text is cut, so the token ids of a
    conversation are the same under every strategy and the same as its prompt-only form (a real BPE merges
    across a cut: a ``\n`` answer start fuses with the prompt's ``\n`` only when tokenized together). A
    conversation that does not end with an assistant turn is all prompt (``generation_cut`` = all of it).
    """
    messages = list(messages)
    answered = bool(messages) and messages[-1]["role"] == "assistant"
    full = render(messages, not answered)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    segments: list[Segment] = []
    cursor = 0
    for i in turns:
        prompt = render(messages[:i], True)
        if not full.startswith(prompt):
            raise TemplateMismatchError(
                "the chat template renders the prompt differently from the same turns inside the full "
                f"conversation (turn {i}); a family adapter is needed.\nprompt: {prompt[-80:]!r}\n"
                f"full:   {full[len(prompt) - 80 : len(prompt)]!r}"
            )
        answer = answer_of(messages[i])
        start = len(prompt)
        pos = full.find(answer, start)
        if pos < 0 or full[start:pos].strip():
            raise TemplateMismatchError(f"assistant turn {i} is not rendered right after its prompt")
        end = pos + len(answer)
        if not full.startswith(end_of_turn, end):
            raise TemplateMismatchError(
                f"assistant turn {i} is not followed by the end-of-turn token {end_of_turn!r}: "
                f"{full[end : end + 40]!r}"
            )
        end += len(end_of_turn)
        if start > cursor:
            segments.append(Segment(full[cursor:start], False))
        learned = answered and (strategy == "assistant" or i == turns[-1])
        segments.append(Segment(full[start:end], learned))
        cursor = end
    generation_cut = len(segments) - 1 if answered else len(segments) + int(cursor < len(full))
    if cursor < len(full):
        segments.append(Segment(full[cursor:], False))
    return SegmentedConversation(segments, generation_cut)


def labels_from_segments(
    segment_ids: Sequence[Sequence[int]], learn: Sequence[bool], ignore_index: int = -100
) -> list[int]:
    """Concatenate token ids of segments into labels: ids where learned, ``ignore_index`` elsewhere."""
    labels: list[int] = []
    for ids, keep in zip(segment_ids, learn, strict=True):
        labels.extend(ids if keep else [ignore_index] * len(ids))
    return labels
