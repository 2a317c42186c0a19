"""The prompt format a run was trained with, written for the runtimes users serve models with: a Jinja
`chat_template` (transformers, vLLM, TGI, llama.cpp's `--jinja`) and an Ollama Go `TEMPLATE`.

For `template: chat` the model's own chat template is kept, with the run's `chat.template_kwargs` set at its top
(so `enable_thinking: false` holds without the caller passing it). For the instruction templates (alpaca,
human_assistant, special_tokens, custom) a template is written from the same markers training used:

- a user message's `content` is the instruction (the `{instruction}` placeholder of a custom template, else its
  first placeholder); the alpaca and human_assistant input block is written when the message has an `input` key
  (transformers and vLLM's Python API pass message keys through; plain chat APIs send `content` alone, which is
  then an instruction without input); other placeholders of a custom template read same-named message keys;
- everything before the answer belongs to the user turn, so the prompt ends where training's prompt ended (the
  response marker included); an assistant turn is its content and the end token;
- BOS is written where sft's own prompt starts with it; a system message is refused (these templates were
  trained without one).
Every literal is emitted as a quoted expression, never as raw template text, so no runtime's whitespace trimming
(trim_blocks, lstrip_blocks) can change it.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass

from sft_cli.encoding.templates import INSTRUCTION_MARKERS
from sft_cli.recipe.schema import EncodingSpec
from sft_cli.recipe.sections import CustomTemplate

SYSTEM_REFUSED = "this model was fine-tuned with an instruction template that has no system message"


@dataclass(frozen=True)
class Part:
    """A piece of a user or assistant turn: literal text, or a message field (`optional`: with its literal
    lead-in, written only when the message has the field)."""

    literal: str = ""
    field: str | None = None
    lead: str = ""
    optional: bool = False


def _placeholders(text: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]


def main_field(template: str | CustomTemplate) -> str:
    """The row field a user message's content fills: `instruction`, or a custom prompt's first placeholder."""
    if isinstance(template, CustomTemplate):
        names = _placeholders(template.prompt)
        return "instruction" if "instruction" in names or not names else names[0]
    return "instruction"


def instruction_parts(template: str | CustomTemplate) -> tuple[list[Part], list[Part]]:
    """(user turn, assistant turn) of an instruction template; `content` is the user's or assistant's text."""
    if isinstance(template, CustomTemplate):
        return _custom_parts(template.prompt, main_field(template)), _custom_parts(template.response, "output")
    head, before_input, before_answer = INSTRUCTION_MARKERS[template]
    user = [
        Part(head),
        Part(field="content"),
        Part(field="input", lead=before_input, optional=True),
        Part(before_answer),
    ]
    return user, [Part(field="content")]


def _custom_parts(text: str, main: str) -> list[Part]:
    parts = []
    for literal, field, _, _ in string.Formatter().parse(text):
        if literal:
            parts.append(Part(literal))
        if field is not None:
            parts.append(Part(field="content" if field == main else field))
    return parts


def _jinja_value(value) -> str:
    """A JSON value as a Jinja literal (Jinja reads true/false but not null)."""
    return "none" if value is None else json.dumps(value)


def _jinja_part(part: Part) -> str:
    if part.field is None:
        return "{{ " + json.dumps(part.literal) + " }}"
    ref = f"message[{json.dumps(part.field)}]"
    if part.field == "content":
        return "{{ " + ref + " }}"
    lead = "{{ " + json.dumps(part.lead) + " }}" if part.lead else ""
    if part.optional:
        return (
            "{%- if message." + part.field + " is defined and " + ref + " -%}" + lead + "{{ " + ref + " }}{%- endif -%}"
        )
    return "{%- if message." + part.field + " is defined -%}" + lead + "{{ " + ref + " }}{%- endif -%}"


def jinja_chat_template(encoding: EncodingSpec, model_template: str | None, bos: bool) -> str:
    """The chat template an export carries (see the module's docstring)."""
    if encoding.template == "chat":
        kwargs = encoding.chat.template_kwargs
        preset = "".join("{%- set " + k + " = " + _jinja_value(v) + " -%}" for k, v in sorted(kwargs.items()))
        return preset + (model_template or "")
    user, assistant = instruction_parts(encoding.template)
    return (
        ("{{ bos_token }}" if bos else "")
        + "{%- for message in messages -%}"
        + "{%- if message.role == 'user' -%}"
        + "".join(map(_jinja_part, user))
        + "{%- elif message.role == 'assistant' -%}"
        + "".join(map(_jinja_part, assistant))
        + "{{ eos_token }}"
        + "{%- else -%}{{ raise_exception("
        + json.dumps(SYSTEM_REFUSED + ": role ")
        + " + message.role) }}"
        + "{%- endif -%}{%- endfor -%}"
    )


def _go_part(part: Part) -> str:
    if part.field is None:
        return "{{ " + json.dumps(part.literal) + " }}"
    return "{{ .Content }}" if part.field == "content" else ""  # Ollama messages carry no other fields


def ollama_template(encoding: EncodingSpec, eos: str) -> str | None:
    """An Ollama Go template for the instruction templates; None for `template: chat` (Ollama then takes the
    template from the GGUF's chat template metadata)."""
    if encoding.template == "chat":
        return None
    user, assistant = instruction_parts(encoding.template)
    return (
        "{{- range .Messages }}"
        + '{{ if eq .Role "user" }}'
        + "".join(map(_go_part, user))
        + '{{ else if eq .Role "assistant" }}'
        + "".join(map(_go_part, assistant))
        + "{{ "
        + json.dumps(eos)
        + " }}{{ end }}{{ end }}"
    )


def user_message(row: dict, template: str | CustomTemplate) -> dict:
    """A normalised instruction row as the user message the exported template reads (see the docstring)."""
    user, _ = instruction_parts(template)
    message = {"role": "user", "content": str(row.get(main_field(template)) or "")}
    for name in sorted({p.field for p in user if p.field not in (None, "content")}):
        if row.get(name) not in (None, ""):
            message[name] = str(row[name])
    return message
