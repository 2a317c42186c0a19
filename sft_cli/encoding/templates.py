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

from sft_cli.encoding.chat import render_chat, render_chat_prompt
from sft_cli.encoding.rendered import ChatTokenizer, Rendered, RenderOptions, Segment, SegmentKind
from sft_cli.encoding.tokens import control_tokens, stop_tokens
from sft_cli.errors import SftError
from sft_cli.recipe.schema import EncodingSpec
from sft_cli.recipe.sections import CustomTemplate

SPECIAL_TOKENS_MARKERS = ("<|instruction|>", "<|input|>", "<|response|>")


def render_options(encoding: EncodingSpec, tokenizer, stops: tuple[str, ...] = ()) -> RenderOptions:
    """The contract's rendering choices with the tokenizer's control tokens and stop tokens (`stops` as a run
    recorded them, else read from the tokenizer and the model's generation config)."""
    chat = encoding.chat
    return RenderOptions(
        loss_turns=encoding.loss_turns,
        unmasked=encoding.loss == "unmasked",
        stop_tokens=tuple(stops) or stop_tokens(tokenizer),
        control_tokens=control_tokens(tokenizer),
        system_message=chat.system_message,
        train_reasoning=chat.train_reasoning,
        template_kwargs=tuple(sorted(chat.template_kwargs.items())),
    )


def _segments(*parts: tuple[str, SegmentKind] | tuple[str, SegmentKind, bool]) -> Rendered:
    return Rendered(tuple(Segment(*part) for part in parts if part[0]))


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
    parts: list = [(head, "marker"), (instruction, "prompt", True)]
    if input_text:
        parts += [(before_input, "marker"), (input_text, "prompt", True)]
    parts.append((before_answer, "marker"))
    if with_answer:
        parts += [(row["output"], "answer", True), (eos, "answer")]
    return _segments(*parts)


def render_custom(template: CustomTemplate, row: dict, eos: str, with_answer: bool = True) -> Rendered:
    """Literal text of the prompt format is a marker, each {field} is prompt; the response format is answer."""
    parts: list = []
    for literal, field, _, _ in string.Formatter().parse(template.prompt):
        parts.append((literal, "marker"))
        if field is not None:
            parts.append((_field(row, field), "prompt", True))
    if with_answer:
        for literal, field, _, _ in string.Formatter().parse(template.response):
            parts.append((literal, "answer"))
            if field is not None:
                parts.append((_field(row, field), "answer", True))
        parts.append((eos, "answer"))
    return _segments(*parts)


def _field(row: dict, field: str) -> str:
    if field not in row:
        raise SftError(
            f"template: placeholder {{{field}}} is not a field of the rows",
            hint=f"fields: {', '.join(sorted(row))}; map columns with data.columns",
        )
    value = row[field]
    return "" if value is None else str(value)


def extra_special_tokens(template: str | CustomTemplate) -> list[str]:
    """Tokens a template needs added to the tokenizer (each then encodes to one id)."""
    if template == "special_tokens":
        return list(SPECIAL_TOKENS_MARKERS)
    if isinstance(template, CustomTemplate):
        return list(template.special_tokens)
    return []


def render(
    template: str | CustomTemplate, row: dict, tokenizer: ChatTokenizer, options: RenderOptions = RenderOptions()
) -> list[Rendered]:
    """The training examples of one normalised row (alpaca fields, or `messages`): one, except for chats whose
    template rewrites history (see chat.py); a plain-text document trains every token, then EOS (the template does
    not apply: it has no prompt)."""
    if set(row) == {"text"}:
        eos = tokenizer.eos_token or ""
        return [Rendered((Segment(row["text"], "answer", plain=True), Segment(eos, "answer")), document=True)]
    if template == "chat":
        return render_chat(tokenizer, chat_row(row), options)
    return [_render_instruction_row(template, row, tokenizer.eos_token or "", True)]


def render_prompt(
    template: str | CustomTemplate, row: dict, tokenizer: ChatTokenizer, options: RenderOptions = RenderOptions()
) -> Rendered:
    """The inference prompt of a row: for chats, the generation prompt of the history before the last assistant
    turn (or of the whole chat when it ends with a user turn)."""
    if template == "chat":
        return render_chat_prompt(tokenizer, chat_row(row), options)
    return _render_instruction_row(template, row, tokenizer.eos_token or "", False)


def _render_instruction_row(template: str | CustomTemplate, row: dict, eos: str, with_answer: bool) -> Rendered:
    if isinstance(template, CustomTemplate):
        return render_custom(template, row, eos, with_answer)
    return render_instruction(template, row, eos, with_answer)


def alpaca_to_messages(row: dict) -> list[dict]:
    """An instruction row as one user turn (input on its own paragraph) and one assistant turn (empty in a row
    to answer: `sft generate RUN TEXT` on a chat-template run)."""
    instruction, input_text = _instruction(row)
    user = f"{instruction}\n\n{input_text}" if input_text else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row.get("output", "")}]


def chat_row(row: dict) -> dict:
    """A row as a chat: its `messages` (and `tools`), or an instruction row as one user and one assistant turn."""
    if "messages" in row:
        return row
    return {"messages": alpaca_to_messages(row)}
