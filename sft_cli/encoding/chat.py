"""Chats through the model's own chat template, for any family, with no per-family code.

The rule, for each trained assistant turn i:
- its prompt is the template's generation prompt for `messages[:i]`, exactly what `sft generate` sends;
- its answer is what the template writes for `messages[:i+1]` after that prompt, through the first stop token
  (and any stop token written straight after it: Command-R7B's `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>`).

One example carries every turn whose prompt + answer is a prefix of the conversation's own rendering. A turn whose
history the template rewrites (Qwen3 drops earlier reasoning; Mistral moves the system message into the last user
turn) does not fit there and is trained in an example of its own, against its own true prefix (`Rendered.split`).

Where a generation prompt is not a prefix of the turn's rendering (DeepSeek-R1 opens `<think>\\n` in the
generation prompt but never writes reasoning in history), the answer is what the turn writes after their common
part; reasoning the template dropped is written back inside the `<think>` block that the prompt opened.

Row text is rendered "marked": control-token literals inside it are wrapped in private-use characters (as
transformers' `sanitize_control_tokens` does), so row text can never fake an end of turn, and after rendering
exactly those literals become `plain` segments, tokenized as text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sft_cli.encoding.marking import MARK_START, mark, unmark
from sft_cli.encoding.rendered import ChatTokenizer, Rendered, RenderOptions
from sft_cli.errors import DataError

THINK_OPEN, THINK_CLOSE, THINK_SEPARATOR = "<think>", "</think>", "\n\n"


# --- messages as the family's template expects them ------------------------------------------------------


def _reasoning_key(template: str) -> str | None:
    """How the template takes reasoning: `reasoning_content` (Qwen3), `thinking` (gpt-oss), else None: inline
    `<think>` in the content (SmolLM3, DeepSeek-R1 data)."""
    if "reasoning_content" in template:
        return "reasoning_content"
    if re.search(r"\.thinking\b|\[\s*['\"]thinking['\"]\s*\]|['\"]thinking['\"]\s+in\s+message", template):
        return "thinking"
    return None


def template_messages(messages: list[dict], template: str, options: RenderOptions) -> list[dict]:
    """The row's messages as the template reads them: the system-message policy applied, reasoning passed in the
    family's own field, internal keys removed."""
    messages = [dict(m) for m in messages]
    if options.system_message == "merge_into_first_user" and messages and messages[0]["role"] == "system":
        system = messages.pop(0)["content"] or ""
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is not None:
            first_user["content"] = f"{system}\n\n{first_user['content'] or ''}" if system else first_user["content"]
    key = _reasoning_key(template)
    out = []
    for message in messages:
        reasoning = message.pop("reasoning", None)
        if message.get("content") is None:
            message["content"] = ""
        if reasoning is not None and message["role"] == "assistant":
            if key:
                message[key] = reasoning
            else:
                message["content"] = f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}{THINK_SEPARATOR}{message['content']}"
        out.append(message)
    return out


# --- rendering ------------------------------------------------------------------------------------------


class _Template:
    """The tokenizer's template applied to marked messages; a template error names the row's problem."""

    def __init__(self, tokenizer: ChatTokenizer, row: dict, options: RenderOptions):
        self.tokenizer = tokenizer
        self.pattern = re.compile("|".join(map(re.escape, options.control_tokens))) if options.control_tokens else None
        source = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
        self.messages = template_messages(self.mark(row["messages"]), source, options)
        merged = len(row["messages"]) - len(self.messages)  # a system message merged into the first user turn
        self.raw = row["messages"][merged:]  # the row's messages, aligned with self.messages
        tools = row.get("tools")
        self.tools = self.mark(tools) if tools else None
        self.kwargs = dict(options.template_kwargs)
        self.rendered: dict[tuple[int, bool], str] = {}  # the same history is asked for more than once

    def mark(self, value: Any) -> Any:
        return mark(value, self.pattern)

    def reasoning(self, i: int) -> str | None:
        """Turn i's reasoning, marked; None when it has none."""
        reasoning = self.raw[i].get("reasoning")
        return self.mark(reasoning) if reasoning is not None else None

    def text(self, upto: int, generation_prompt: bool) -> str:
        if (upto, generation_prompt) not in self.rendered:
            self.rendered[upto, generation_prompt] = self._render(self.messages[:upto], generation_prompt)
        return self.rendered[upto, generation_prompt]

    def continued(self, upto: int) -> str:
        """The first `upto` messages and a user turn after them: what the template writes once the conversation
        goes on (Apertus closes an assistant turn only then)."""
        return self._render([*self.messages[:upto], {"role": "user", "content": "."}], False)

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        """The template's text; tool-call arguments go as a mapping (what most templates take, e.g. `| tojson`),
        and as JSON text where the template concatenates them as a string (DeepSeek-V3.1 on the hub)."""
        import jinja2

        try:
            try:
                return self._apply(messages, generation_prompt)
            except TypeError:
                as_text = _arguments_as_text(messages)
                if as_text is None:
                    raise
                return self._apply(as_text, generation_prompt)
        except (jinja2.TemplateError, TypeError, KeyError, IndexError) as exc:
            message = str(exc) or type(exc).__name__
            hint = "fix the row, or set data.on_bad_row: skip to skip and count such rows"
            if "system" in message.lower():
                hint = "set chat.system_message: merge_into_first_user (the template takes no system turn)"
            raise DataError(f"the chat template refused this chat: {message}", hint=hint) from None

    def _apply(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=self.tools, tokenize=False, add_generation_prompt=generation_prompt, **self.kwargs
        )


def _arguments_as_text(messages: list[dict]) -> list[dict] | None:
    """The messages with every tool call's mapping arguments as JSON text; None when there are none."""
    changed, out = False, []
    for message in messages:
        calls = message.get("tool_calls") or []
        if any(isinstance(c["function"].get("arguments"), dict) for c in calls):
            changed = True
            calls = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False),
                    },
                }
                for c in calls
            ]
            message = {**message, "tool_calls": calls}
        out.append(message)
    return out if changed else None


def _stop_end(tail: str, stops: tuple[str, ...]) -> int:
    """End of the first stop token in a marked tail that the template wrote (not one inside row text), and of every
    stop token it writes straight after that one: Command-R7B ends a turn `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>`,
    and a model trained only through the first would never learn the EOS a runtime stops on."""
    best = None
    for stop in stops:
        start = tail.find(stop)
        while start > 0 and tail[start - 1] == MARK_START:
            start = tail.find(stop, start + 1)
        if start >= 0 and (best is None or start < best[0]):
            best = (start, start + len(stop))
    if best is None:
        return len(tail)
    end = best[1]
    while following := next((stop for stop in stops if stop and tail.startswith(stop, end)), None):
        end += len(following)
    return end


def _align_end(prompt: str, written: str, tokens: tuple[str, ...]) -> int | None:
    """Where the turn starts in `written` when only the history differs from `prompt`: the end of the longest
    stretch of `written` that ends like the prompt, through the prompt's last control token (e.g. `[/INST]`)."""
    matches = list(re.finditer("|".join(map(re.escape, tokens)), prompt)) if tokens else []
    if not matches:
        return None
    last = matches[-1]
    needed = len(prompt) - last.start()  # the last control token and whatever follows it
    best, best_len = None, 0
    start = written.find(last.group(0))
    while start >= 0:
        end = start + needed
        if written[start:end] == prompt[last.start() :]:
            length = needed
            while length < min(len(prompt), end) and prompt[-length - 1] == written[end - length - 1]:
                length += 1
            if length > best_len:
                best, best_len = end, length
        start = written.find(last.group(0), start + 1)
    return best


def _last_control_end(text: str, tokens: tuple[str, ...]) -> int:
    """End of the last control token the template wrote in `text` (0 if none)."""
    ends = [m.end() for m in re.finditer("|".join(map(re.escape, tokens)), text)] if tokens else []
    return max(ends, default=0)


def _turn(template: _Template, i: int, options: RenderOptions) -> tuple[str, str, tuple[str, ...]]:
    """(prompt, answer, notes) of assistant turn i, marked; see the module's rule. Notes name what the template
    left out of the turn (`reasoning_dropped`, `tool_calls_dropped`)."""
    prompt = template.text(i, True)
    written = template.text(i + 1, False)
    reasoning = template.reasoning(i)
    history = template.text(i, False)
    opener = _THINK_OPENER.search(prompt)
    if written.startswith(prompt):
        tail = written[len(prompt) :]
        answer = tail[: _stop_end(tail, options.stop_tokens)]
    elif opener and written.startswith(prompt[: opener.start()]):
        # the generation prompt opens a think block the history never shows (DeepSeek-R1, QwQ): the answer is
        # what follows the prompt's header, with the reasoning written back inside the opened block
        tail = written[opener.start() :]
        answer = _with_think_block(tail[: _stop_end(tail, options.stop_tokens)], reasoning)
    elif history and written.startswith(history) and _continues(written[len(history) :], prompt[len(history) :]):
        # the turn continues the history's own block (Apertus keeps a tool result and the answer after it in one
        # assistant block): the answer is what the turn adds, never the tool call or output before it
        tail = written[len(history) :]
        answer = tail[: _stop_end(tail, options.stop_tokens)]
    elif (aligned := _align_end(prompt, written, options.control_tokens)) is not None and aligned < len(written):
        # the history was rewritten (Mistral drops or moves the system message), the prompt's end is intact (an
        # alignment at the very end matched a generation prompt the template always writes, as Command-R7B's does)
        tail = written[aligned:]
        answer = tail[: _stop_end(tail, options.stop_tokens)]
    else:
        common = 0
        for a, b in zip(prompt, written):
            if a != b:
                break
            common += 1
        common = min(common, _last_control_end(prompt[:common], options.control_tokens) or common)
        opened, rest = prompt[common:], written[common:]
        answer = rest[: _stop_end(rest, options.stop_tokens)]
        if THINK_OPEN in opened and THINK_CLOSE not in opened:  # a think block the history never shows
            answer = _with_think_block(answer, reasoning)
    goes_on = _goes_on(template.messages, i)
    if not goes_on and not any(answer.endswith(stop) for stop in options.stop_tokens) and written.endswith(answer):
        answer += _closing_stop(template, i, written, options.stop_tokens)
    notes = []
    if reasoning and reasoning.strip() and reasoning.strip() not in answer and options.train_reasoning:
        notes.append("reasoning_dropped")
    calls = template.raw[i].get("tool_calls") or []
    if any(call["function"]["name"] not in answer for call in calls):
        notes.append("tool_calls_dropped")
    return prompt, answer, tuple(notes)


def _goes_on(messages: list[dict], i: int) -> bool:
    """Whether assistant turn i is followed by something other than a user turn (a tool result)."""
    return i + 1 < len(messages) and messages[i + 1]["role"] != "user"


def _continues(tail: str, generation_suffix: str) -> bool:
    """Whether the turn's text goes straight on from the history, sharing nothing with what the generation prompt
    adds (Apertus' `<|assistant_start|>` is not written again inside an open block; a header is)."""
    return bool(tail) and not (generation_suffix and tail[0] == generation_suffix[0])


def _stripped(answer: str, stops: tuple[str, ...]) -> str:
    """The answer without its closing stop token."""
    return next((answer[: -len(stop)] for stop in stops if stop and answer.endswith(stop)), answer)


def _closing_stop(template: _Template, i: int, written: str, stops: tuple[str, ...]) -> str:
    """The stop token that ends turn i when the template writes it only once the conversation goes on: it belongs
    to the answer, or the model never learns to stop. Empty when the template writes none."""
    try:
        continued = template.continued(i + 1)
    except DataError:  # the template refuses a user turn here: nothing to learn from it
        return ""
    after = continued[len(written) :] if continued.startswith(written) else ""
    return next((stop for stop in stops if after.startswith(stop)), "")


_THINK_OPENER = re.compile(re.escape(THINK_OPEN) + r"\s*$")


def _with_think_block(answer: str, reasoning: str | None) -> str:
    """An answer after a prompt that opened `<think>`: the reasoning (or nothing), the close, then the answer as
    the row wrote it. A turn with reasoning reached the template as `<think>..</think>` + THINK_SEPARATOR +
    content (template_messages), and the template kept or cut the block: only that separator is removed, so an
    answer's own leading newline stays."""
    if reasoning is not None:
        if THINK_CLOSE in answer:
            answer = answer.split(THINK_CLOSE, 1)[-1]
        answer = answer.removeprefix(THINK_SEPARATOR)
    body = reasoning.strip("\n") if reasoning else ""
    return (f"{body}\n" if body else "\n") + f"{THINK_CLOSE}{THINK_SEPARATOR}" + answer


def _content_ranges(text: str, template: _Template, upto: int, skip: set[int]) -> list[tuple[int, int]]:
    """Where each message's content (not the trained turns in `skip`) sits in `text`, best effort, in order."""
    ranges, cursor = [], 0
    for k, message in enumerate(template.messages[:upto]):
        content = message.get("content") or ""
        if not isinstance(content, str) or not content.strip():
            continue
        start = text.find(content, cursor)
        if start < 0:
            continue  # the template rewrote it (trimmed, moved): its text stays a marker
        if k not in skip:
            ranges.append((start, start + len(content)))
        cursor = start + len(content)
    return ranges


def _reasoning_cut(answer: str, template: _Template, i: int) -> int:
    """Where the final answer starts in a trained turn that carries reasoning (0 when none is found)."""
    reasoning = (template.reasoning(i) or "").strip()
    found = answer.find(reasoning) if reasoning else -1
    if found < 0:
        return 0
    end = found + len(reasoning)
    content = template.messages[i].get("content") or ""
    if THINK_CLOSE in content:
        content = content.split(THINK_CLOSE)[-1].lstrip("\n")
    at = answer.find(content, end) if content.strip() else -1
    return at if at >= 0 else end


def _example(
    text: str, answers: list[tuple[int, int, int]], prompts: list[tuple[int, int]], split: bool, notes: tuple[str, ...]
) -> Rendered:
    """Segments of a marked text: answers as (start, reasoning cut, end), prompts as ranges; the rest markers."""
    spans = [(s, e, "prompt") for s, e in prompts if not any(s < end and a < e for a, _, end in answers)]
    for start, cut, end in answers:
        if cut > start:
            spans.append((start, cut, "marker"))
        spans.append((cut, end, "answer"))
    spans = [s for s in sorted(spans) if s[1] > s[0]]
    segments, cursor = [], 0
    for start, end, kind in spans:
        if start < cursor:  # a content range overlapping an answer: the answer wins
            continue
        if start > cursor:
            segments += unmark(text[cursor:start], "marker")
        segments += unmark(text[start:end], kind)
        cursor = end
    if cursor < len(text):
        segments += unmark(text[cursor:], "marker")
    return Rendered(tuple(s for s in segments if s.text), split, notes)


def render_chat(tokenizer: ChatTokenizer, row: dict, options: RenderOptions) -> list[Rendered]:
    """The training examples of one chat row (see the module's rule)."""
    template = _Template(tokenizer, row, options)
    messages = template.messages
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if options.unmasked:  # every token trains: the conversation as the template writes it, once
        text = template.text(len(messages), False)
        return [_example(text, [], _content_ranges(text, template, len(messages), set()), False, ())]
    trained = assistants if options.loss_turns == "all" else assistants[-1:]
    last = trained[-1]
    whole = template.text(last + 1, False)
    together, alone, notes = [], [], []
    if messages[-1]["role"] != "assistant":  # the turns after the last answer cannot train: say so
        notes.append("ends_without_answer")
    last_together = None
    for i in trained:
        prompt, answer, turn_notes = _turn(template, i, options)
        notes += turn_notes
        if "tool_calls_dropped" in turn_notes and not _stripped(answer, options.stop_tokens).strip():
            continue  # the template wrote nothing of the turn: training its end token alone teaches silence
        if not answer.endswith(options.stop_tokens) and _goes_on(messages, i):
            notes.append("tool_call_without_stop")  # a runtime would not stop after the call (Apertus without
            continue  # its generation config's <|tools_suffix|>): trained, it would run on into the tool's output
        cut = len(prompt) + (0 if options.train_reasoning else _reasoning_cut(answer, template, i))
        if whole.startswith(prompt + answer):
            together.append((len(prompt), cut, len(prompt) + len(answer)))
            last_together = i
        else:
            text = prompt + answer
            prompts = _content_ranges(prompt, template, i, set())
            alone.append(_example(text, [(len(prompt), cut, len(text))], prompts, True, ()))
    notes_seen = tuple(dict.fromkeys(notes))
    examples = []
    if together:
        # after the last trained turn comes only the template's closing text; after an earlier one, nothing trains
        text = whole if last_together == last else whole[: together[-1][2]]
        prompts = _content_ranges(text, template, last + 1, set(trained))
        examples.append(_example(text, together, prompts, False, notes_seen))
    elif notes_seen:
        alone = [Rendered(r.segments, r.split, notes_seen) for r in alone]
    return examples + alone


def render_chat_prompt(tokenizer: ChatTokenizer, row: dict, options: RenderOptions) -> Rendered:
    """The generation prompt for the history before the last assistant turn (or for the whole chat)."""
    template = _Template(tokenizer, row, options)
    messages = template.messages
    upto = len(messages) - 1 if messages and messages[-1]["role"] == "assistant" else len(messages)
    text = template.text(upto, True)
    return _example(text, [], _content_ranges(text, template, upto, set()), False, ())
