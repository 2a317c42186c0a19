"""Prompt templates: one row -> `Rendered`, the text cut into segments that say what each part is.

Segment kinds:
- `marker`: text the template adds (`### Response:\\n`, chat headers). Kept when a prompt is truncated.
- `prompt`: the user's content (instruction, input, user/system turns). Never trained under masked loss.
- `answer`: what the model must produce, end token included. Trained under masked loss.

The inference prompt of a row is the text of every segment before its (last) answer: `render_prompt` gives it,
and `sft generate` uses it, so training and inference see the same prompt.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sft_cli.errors import DataError, SftError
from sft_cli.recipe import CustomTemplate

SegmentKind = Literal["marker", "prompt", "answer"]
SPECIAL_TOKENS_MARKERS = ("<|instruction|>", "<|input|>", "<|response|>")


@dataclass(frozen=True)
class Segment:
    text: str
    kind: SegmentKind


@dataclass(frozen=True)
class Rendered:
    """A rendered example: its segments, in order; their texts joined give the full training text."""

    segments: tuple[Segment, ...]

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


def _segments(*parts: tuple[str, SegmentKind]) -> Rendered:
    return Rendered(tuple(Segment(text, kind) for text, kind in parts if text))


def _instruction(row: dict) -> tuple[str, str]:
    return row["instruction"], row.get("input") or ""


# Built-in instruction templates as (before the instruction, before the input, before the answer).
INSTRUCTION_MARKERS = {
    "alpaca": ("### Instruction:\n", "\n### Input:\n", "\n### Response:\n"),
    "human_assistant": ("### Human:\n", "\n", "\n\n### Assistant:\n"),
    "special_tokens": ("<|instruction|> ", " <|input|> ", " <|response|> "),
}


def render_instruction(name: str, row: dict, eos: str, with_answer: bool = True) -> Rendered:
    """A built-in instruction template; the input block is left out when the input is empty."""
    head, before_input, before_answer = INSTRUCTION_MARKERS[name]
    instruction, input_text = _instruction(row)
    parts = [(head, "marker"), (instruction, "prompt")]
    if input_text:
        parts += [(before_input, "marker"), (input_text, "prompt")]
    parts.append((before_answer, "marker"))
    if with_answer:
        parts.append((row["output"] + eos, "answer"))
    return _segments(*parts)


def render_custom(template: CustomTemplate, row: dict, eos: str, with_answer: bool = True) -> Rendered:
    """Literal text of the prompt format is a marker, each {field} is prompt; the response format is answer."""
    parts: list[tuple[str, SegmentKind]] = []
    for literal, field, _, _ in string.Formatter().parse(template.prompt):
        parts.append((literal, "marker"))
        if field is not None:
            parts.append((_field(row, field), "prompt"))
    if with_answer:
        response = "".join(
            literal + (_field(row, field) if field is not None else "")
            for literal, field, _, _ in string.Formatter().parse(template.response)
        )
        parts.append((response + eos, "answer"))
    return _segments(*parts)


def _field(row: dict, field: str) -> str:
    if field not in row:
        raise SftError(
            f"template: placeholder {{{field}}} is not a field of the rows",
            hint=f"fields: {', '.join(sorted(row))}; map columns with data.columns",
        )
    value = row[field]
    return "" if value is None else str(value)


def template_fields(template: CustomTemplate) -> set[str]:
    """The {field} names a custom template uses."""
    return {
        field
        for fmt in (template.prompt, template.response)
        for _, field, _, _ in string.Formatter().parse(fmt)
        if field is not None
    }


# --- the tokenizer's own chat template ----------------------------------------------------------------


def alpaca_to_messages(row: dict) -> list[dict]:
    """An instruction row as one user turn (input on its own paragraph) and one assistant turn."""
    instruction, input_text = _instruction(row)
    user = f"{instruction}\n\n{input_text}" if input_text else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def _chat_text(tokenizer: ChatTokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def render_chat(
    tokenizer: ChatTokenizer, messages: list[dict], end_tokens: tuple[str, ...], loss_turns: str = "all",
    with_answer: bool = True,
) -> Rendered:
    """Render a conversation with the tokenizer's chat template and find each turn's content in it.

    An assistant turn's answer is its content plus the end-of-turn token the template writes right after it
    (one of `end_tokens`). The text before each trained turn must equal the template's generation prompt
    for the history, so the model is trained on the prompt it gets at inference.
    """
    if not with_answer:
        history = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
        return _segments((_chat_text(tokenizer, history, True), "marker"))
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    trained = set(assistant_turns if loss_turns == "all" else assistant_turns[-1:])
    full = _chat_text(tokenizer, messages, False)
    parts: list[tuple[str, SegmentKind]] = []
    cursor = 0
    for i, message in enumerate(messages):
        content = message["content"]
        start = full.find(content, cursor) if content else cursor
        if start < 0:
            raise DataError(
                f"the chat template changes the text of turn {i + 1} ({message['role']}), so its tokens "
                "cannot be located",
                hint="use a template that writes message contents verbatim, or template: alpaca",
            )
        end = start + len(content)
        if i in trained:
            expected = _chat_text(tokenizer, messages[:i], True)
            if full[:start] != expected:
                raise DataError(
                    f"the chat template renders the history before assistant turn {i + 1} differently from "
                    "its generation prompt, so training and inference prompts would differ",
                    hint="use loss_turns: last, or a template whose generation prompt is a prefix of the chat",
                )
            end += next((len(t) for t in end_tokens if t and full.startswith(t, end)), 0)
        parts.append((full[cursor:start], "marker"))
        parts.append((full[start:end], "answer" if i in trained else "prompt"))
        cursor = end
    parts.append((full[cursor:], "marker"))
    return _segments(*parts)


def check_chat_template(tokenizer: ChatTokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise SftError(
            "template: chat needs a tokenizer with a chat template, and this one has none",
            hint="pick template: alpaca, human_assistant or special_tokens, or a custom template",
        )


def extra_special_tokens(template: str | CustomTemplate) -> list[str]:
    """Tokens a template needs added to the tokenizer (each then encodes to one id)."""
    if template == "special_tokens":
        return list(SPECIAL_TOKENS_MARKERS)
    if isinstance(template, CustomTemplate):
        return list(template.special_tokens)
    return []


def render(
    template: str | CustomTemplate, row: dict, tokenizer: ChatTokenizer, *, loss_turns: str = "all",
    end_tokens: tuple[str, ...] = (), with_answer: bool = True,
) -> Rendered:
    """Render one normalised row (alpaca fields, or `messages`) with the recipe's template."""
    eos = tokenizer.eos_token or ""
    if template == "chat":
        messages = row["messages"] if "messages" in row else alpaca_to_messages(row)
        return render_chat(tokenizer, messages, end_tokens or (eos,), loss_turns, with_answer)
    if isinstance(template, CustomTemplate):
        return render_custom(template, row, eos, with_answer)
    return render_instruction(template, row, eos, with_answer)
