"""Rows in: files or hub datasets -> normalised dicts, with column mapping and per-row validation."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sft_cli.data.conversations import CHAT_ROLES, mapped_roles, sharegpt_record, tool_schemas, unknown_role
from sft_cli.data.sources import count_records, iter_records
from sft_cli.errors import DataError
from sft_cli.recipe.schema import Recipe
from sft_cli.recipe.sections import CustomTemplate

FORMAT_FIELDS = {
    "alpaca": ("instruction", "input", "output"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "sharegpt": ("conversations", "system", "tools"),
    "text": ("text",),
}
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


@dataclass(frozen=True)
class Row:
    """A normalised row and its 1-based number in the source it came from."""

    number: int
    fields: dict


@dataclass
class Rows:
    rows: list[Row]
    source: str
    format: str
    skipped: list[tuple[int, str]] = field(default_factory=list)


def read_records(path: str, split: str = "train") -> list[dict]:
    """Every record of a source, as a list: for small sources (eval files, `sft eval`'s task column)."""
    return [record for _, record in iter_records(path, split)]


def rows_to_answer(path: str) -> tuple[list[dict], list[dict]]:
    """The records of a file to answer (`sft generate --file`) and their rows in the training format; rows need
    no answer, and any other columns are kept."""
    records = read_records(path)
    answerable = [{"output": "-", "completion": "-", **record} for record in records]
    fmt = detect_format(answerable[0], {}, path) if records else "alpaca"
    rows = []
    for number, fields in enumerate(answerable, 1):
        try:
            rows.append(normalise(fields, fmt, {}, keep_extra=True))
        except ValueError as exc:
            raise DataError(f"{path} row {number}: {exc}") from None
    return records, rows


def detect_format(record: dict, columns: dict[str, str], source: str) -> str:
    """Guess the format from the first record's keys (after column mapping)."""
    keys = {_reverse(columns).get(k, k) for k in record}
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if keys == {"text"}:
        return "text"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    raise DataError(
        f"{source}: cannot tell the data format from the columns {sorted(record)}",
        hint="set data.format (alpaca | prompt_completion | messages | sharegpt | text) and map columns with "
        "data.columns",
    )


def check_columns(columns: dict[str, str], record: dict, fmt: str, source: str, extra: set[str]) -> None:
    """Every `data.columns` mapping must apply: its field belongs to the format (or is a custom template's
    placeholder, `extra`), and no column of the file already has the field's name (its column exists: checked
    before the format is detected)."""
    fields = set(FORMAT_FIELDS[fmt]) | extra
    for field_name, column in columns.items():
        where = f"data.columns.{field_name}"
        if field_name not in fields:
            raise DataError(
                f"{source}: {where}: {field_name!r} is not a field of the {fmt} format ({', '.join(sorted(fields))})",
                hint="map the format's field names to your columns, e.g. {output: answer}",
            )
        if field_name in record and field_name != column:
            raise DataError(
                f"{source}: {where}: maps column {column!r} to {field_name!r}, but the file has a {field_name!r} "
                "column too; which one is meant?",
                hint=f"rename or drop one of the two columns, or remove the mapping to use {field_name!r}",
            )


def _reverse(columns: dict[str, str]) -> dict[str, str]:
    return {source: target for target, source in columns.items()}


def normalise(record: dict, fmt: str, columns: dict[str, str], keep_extra: bool, roles: dict | None = None) -> dict:
    """Rename mapped columns and turn the row into alpaca fields or `messages` (ShareGPT conversations and
    `data.roles` read by data/conversations.py); raise ValueError if malformed."""
    broken = lone_surrogate(record)
    if broken:
        raise ValueError(f"field {broken} holds a lone UTF-16 surrogate: not Unicode text (fix the file's escapes)")
    renamed = {_reverse(columns).get(k, k): v for k, v in record.items()}
    if fmt == "sharegpt":
        return normalise_chat(sharegpt_record(renamed, roles or {}))
    if fmt == "text":
        text = renamed.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"field {columns.get('text', 'text')!r} must be non-empty text (a document)")
        return {"text": text}
    if fmt == "messages":
        return normalise_chat({**renamed, "messages": mapped_roles(renamed.get("messages"), roles or {})})
    if fmt == "prompt_completion":
        row = {"instruction": renamed.get("prompt"), "input": "", "output": renamed.get("completion")}
        names = {"instruction": "prompt", "output": "completion"}
    else:
        row = {key: renamed.get(key) for key in FORMAT_FIELDS["alpaca"]}
        names = {"instruction": "instruction", "output": "output"}
    for key, shown in names.items():
        value = row[key]
        if value is None:
            raise ValueError(f"missing field {columns.get(shown, shown)!r}")
        if not isinstance(value, str):
            raise ValueError(f"field {columns.get(shown, shown)!r} must be text, got {type(value).__name__}")
    if not row["output"].strip():
        raise ValueError(f"field {columns.get(names['output'], names['output'])!r} (the answer) is empty")
    if row["input"] is not None and not isinstance(row["input"], str):
        raise ValueError(f"field {columns.get('input', 'input')!r} must be text, got {type(row['input']).__name__}")
    row["input"] = row["input"] or ""
    if keep_extra:
        row = {**renamed, **row}
    return row


def lone_surrogate(value, where: str = "") -> str | None:
    """Where a value holds text no tokenizer can take (JSON's "\\ud800" alone): the field's name, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return repr(where or "value")
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = lone_surrogate(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def normalise_chat(record: dict) -> dict:
    """`messages` (and `tools`) of a chat row, checked; each message keeps what templates read: role, content,
    `reasoning` (from reasoning_content / reasoning / thinking, or a leading <think> block in the content),
    tool_calls, tool_call_id and name."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list of {role, content}")
    seen = [m.get("role") for m in messages if isinstance(m, dict)]
    out = [_check_message(i, m, seen) for i, m in enumerate(messages, 1)]
    assistants = [m for m in out if m["role"] == "assistant"]
    if not assistants:
        raise ValueError("no assistant turn to train on")
    for i, m in enumerate(out, 1):
        if (
            m["role"] == "assistant"
            and not (m["content"] or "").strip()
            and not m.get("tool_calls")
            and not (m.get("reasoning") or "").strip()
        ):
            raise ValueError(f"message {i}: the assistant turn is empty")
    row = {"messages": out}
    tools = record.get("tools")
    if isinstance(tools, str) and tools.strip():
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise ValueError(f"field 'tools' is not valid JSON: {exc.msg}") from None
    if tools:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise ValueError("field 'tools' must be a list of JSON schema objects")
        row["tools"] = tool_schemas(tools)
    return row


def parse_arguments(arguments: Any) -> Any:
    """Tool-call arguments as a mapping where they are JSON text (templates expect a mapping)."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return arguments
        return parsed if isinstance(parsed, dict) else arguments
    return arguments


def _check_message(i: int, message, seen: list) -> dict:
    if not isinstance(message, dict):
        raise ValueError(f"message {i}: must be an object with 'role' and 'content'")
    if message.get("role") not in CHAT_ROLES:
        raise ValueError(unknown_role(f"message {i}", message.get("role"), seen))
    role, content = message["role"], message.get("content")
    calls = message.get("tool_calls") if role == "assistant" else None
    if content is None and not calls:
        content = "" if role == "assistant" and _reasoning_of(message) else None
    if not isinstance(content, str) and not (content is None and calls):
        raise ValueError(f"message {i}: content must be text")
    out: dict = {"role": role, "content": content}
    reasoning = _reasoning_of(message) if role == "assistant" else None
    if role == "assistant" and reasoning is None and content and "</think>" in content:
        head, content = content.split("</think>", 1)
        reasoning, out["content"] = head.split("<think>", 1)[-1].strip("\n"), content.lstrip("\n")
    if reasoning is not None:
        out["reasoning"] = reasoning
    if calls:
        if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
            raise ValueError(f"message {i}: tool_calls must be a list of objects")
        out["tool_calls"] = [_tool_call(i, c) for c in calls]
    for key in ("tool_call_id", "name"):
        if isinstance(message.get(key), str):
            out[key] = message[key]
    return out


def _reasoning_of(message: dict) -> str | None:
    value = next((message[k] for k in REASONING_KEYS if message.get(k) is not None), None)
    if value is not None and not isinstance(value, str):
        raise ValueError("reasoning must be text")
    return value


def _tool_call(i: int, call: dict) -> dict:
    """A tool call in the shape templates read: {type, function: {name, arguments}} (id kept)."""
    function = call.get("function", call)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError(f"message {i}: each tool call needs a function name")
    out = {
        "type": call.get("type", "function"),
        "function": {"name": function["name"], "arguments": parse_arguments(function.get("arguments", {}))},
    }
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def source_of(recipe: Recipe, split: str) -> str:
    """The data path a split reads."""
    data = recipe.data
    if split == "eval" and not recipe.has_eval:
        raise DataError("the recipe has no eval data", hint="set data.eval_path or data.eval_fraction")
    return data.eval_path if split == "eval" and data.eval_path else data.path


def row_batches(recipe: Recipe, split: str = "train", size: int = 1000) -> Iterator[Rows]:
    """The train or eval rows of a recipe, normalised, streamed in batches; bad rows raise (naming file and row)
    or are skipped and counted (`data.on_bad_row: skip`)."""
    data = recipe.data
    path = source_of(recipe, split)
    records = iter_records(path, data.split, data.name, data.revision)
    first = next(records, None)
    if first is None:
        raise DataError(f"{path}: no rows")
    # a mapped column must exist before the format is guessed from what the mapping gives
    missing = next(((name, column) for name, column in data.columns.items() if column not in first[1]), None)
    if missing:
        raise DataError(
            f"{path}: data.columns.{missing[0]}: the file has no column {missing[1]!r} "
            f"(its columns: {', '.join(sorted(first[1]))})"
        )
    fmt = data.format or detect_format(first[1], data.columns, path)
    keep_extra = isinstance(recipe.template, CustomTemplate)
    check_columns(data.columns, first[1], fmt, path, recipe.template.fields() if keep_extra else set())
    chosen = _split_rows(recipe, path) if data.eval_fraction and not data.eval_path else None
    wanted = data.limit if split == "train" else None
    batch = Rows([], path, fmt)
    kept = 0
    for number, record in itertools.chain([first], records):
        if chosen is not None and (number in chosen) != (split == "eval"):
            continue
        try:
            batch.rows.append(Row(number, normalise(record, fmt, data.columns, keep_extra, data.roles)))
            kept += 1
        except ValueError as exc:
            if data.on_bad_row == "error":
                raise DataError(
                    f"{path} row {number}: {exc}",
                    hint="fix the row, or set data.on_bad_row: skip to skip and count such rows",
                ) from None
            batch.skipped.append((number, str(exc)))
        if len(batch.rows) + len(batch.skipped) >= size:
            yield batch
            batch = Rows([], path, fmt)
        if wanted and kept >= wanted:
            break
    if batch.rows or batch.skipped:
        yield batch


def load_rows(recipe: Recipe, split: str = "train") -> Rows:
    """All rows of a split at once: for small data (eval files, tests). Large data goes through `row_batches`.
    With several sources, each source's rows in turn (source names them all; row numbers are per source)."""
    if recipe.mixed:
        parts = [load_rows(single, split) for _, single in recipe.sources() if split == "train" or single.has_eval]
        if not parts:
            source_of(recipe, split)  # raises: no eval data
        names = ", ".join(p.source for p in parts)
        return Rows([r for p in parts for r in p.rows], names, "mixed", [s for p in parts for s in p.skipped])
    merged = None
    for batch in row_batches(recipe, split):
        if merged is None:
            merged = batch
        else:
            merged.rows += batch.rows
            merged.skipped += batch.skipped
    return merged


def _split_rows(recipe: Recipe, path: str) -> set[int]:
    """The record numbers held out for eval: a seeded sample of `eval_fraction`, so train and eval never share a
    row and reruns agree."""
    data = recipe.data
    count = count_records(path, data.split, data.name, data.revision)
    order = list(range(1, count + 1))
    random.Random(recipe.training.seed).shuffle(order)
    return set(order[: max(1, round(count * data.eval_fraction))])
