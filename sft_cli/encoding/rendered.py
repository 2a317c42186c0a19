"""The values that flow between rendering, chat handling and encoding: segments of rendered text, the rendering
options, and the tokenizer surface templates use. Kept apart so that templates, chat and encode share them
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

SegmentKind = Literal["marker", "prompt", "answer"]


@dataclass(frozen=True)
class Segment:
    """A run of text and what it is. `plain`: it comes from the row, so a control token's text inside it (a literal
    `<|im_end|>` in an answer) is tokenized as ordinary text unless the recipe says otherwise."""

    text: str
    kind: SegmentKind
    plain: bool = False


@dataclass(frozen=True)
class Rendered:
    """A rendered example: its segments, in order; their texts joined give the full training text. `split`: a chat
    turn trained in an example of its own (the template rewrites its history); `notes`: warning kinds found while
    rendering (e.g. `reasoning_dropped`)."""

    segments: tuple[Segment, ...]
    split: bool = False
    notes: tuple[str, ...] = ()
    document: bool = False  # plain text (`format: text`): split into windows of max_length rather than dropped

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    @property
    def prompt(self) -> str:
        """The text before the last answer: exactly what the model is given at inference."""
        last = max((i for i, s in enumerate(self.segments) if s.kind == "answer"), default=len(self.segments))
        while last > 0 and self.segments[last - 1].kind == "answer":
            last -= 1
        return "".join(s.text for s in self.segments[:last])


class ChatTokenizer(Protocol):
    eos_token: str
    chat_template: str | None

    def apply_chat_template(self, conversation: list[dict], **kwargs: Any) -> str: ...


@dataclass(frozen=True)
class RenderOptions:
    """Everything besides the row that decides how it renders: the recipe's choices and the tokenizer's facts."""

    loss_turns: str = "all"
    unmasked: bool = False
    stop_tokens: tuple[str, ...] = ()
    control_tokens: tuple[str, ...] = ()  # row text that spells one of these stays text (see tokens.py)
    system_message: str = "keep"
    train_reasoning: bool = True
    template_kwargs: tuple[tuple[str, Any], ...] = ()
