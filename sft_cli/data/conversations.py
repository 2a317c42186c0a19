"""Conversation layouts as users find them, read into the `messages` rows the chat rule trains.

ShareGPT (OpenHermes, SlimOrca, ShareGPT dumps, most LLaMA-Factory and Axolotl examples) keeps a chat in a
`conversations` list of `{"from": ..., "value": ...}` turns (`role`/`content` keys are read too), with an optional
`system` column and a `tools` column (a list, or JSON text). Its roles: human/user, gpt/assistant/model/chatgpt,
system, function_call (an assistant's tool call: the JSON of a call or of a list of calls; trained as the template
writes a tool call) and observation/tool/function (a tool's result: context, never trained). `data.roles` maps any
other role value onto these, in `messages` rows too: `{bot: assistant}`.
"""

from __future__ import annotations

import json
from typing import Any

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "function_call": "tool_call",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}
CHAT_ROLES = ("system", "user", "assistant", "tool")


def sharegpt_record(record: dict, roles: dict[str, str]) -> dict:
    """A ShareGPT row as a `messages` row: the `system` column first, each function call an assistant turn with
    `tool_calls`, each observation a `tool` turn; `tools` kept. Raises ValueError naming the turn at fault."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("field 'conversations' must be a non-empty list of {from, value}")
    known = {**SHAREGPT_ROLES, **roles}
    messages = []
    system = record.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {i} of 'conversations' must be an object with 'from' and 'value'")
        speaker = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        role = known.get(speaker)
        if role is None:
            seen = [t.get("from", t.get("role")) for t in turns if isinstance(t, dict)]
            raise ValueError(unknown_role(f"turn {i}", speaker, seen))
        if role == "tool_call":
            messages.append({"role": "assistant", "content": "", "tool_calls": calls_of(i, value)})
        else:
            messages.append({"role": role, "content": value})
    row: dict[str, Any] = {"messages": messages}
    if record.get("tools") is not None:
        row["tools"] = record["tools"]
    return row


def mapped_roles(messages: Any, roles: dict[str, str]) -> Any:
    """`messages` with `data.roles` applied (a role mapped to tool_call becomes an assistant turn of calls)."""
    if not roles or not isinstance(messages, list):
        return messages
    out = []
    for i, message in enumerate(messages, 1):
        role = roles.get(message.get("role")) if isinstance(message, dict) else None
        if role == "tool_call":
            out.append({"role": "assistant", "content": "", "tool_calls": calls_of(i, message.get("content"))})
        elif role:
            out.append({**message, "role": role})
        else:
            out.append(message)
    return out


def unknown_role(where: str, role: Any, seen: list[Any]) -> str:
    """The error for a role no mapping covers: the role, the roles this row uses, and the fix."""
    roles = ", ".join(dict.fromkeys(str(r) for r in seen))
    return (
        f"{where}: role {role!r} is not one sft reads (this row's roles: {roles}); map it with data.roles, e.g. "
        f"{{{role}: assistant}} (roles: {', '.join([*CHAT_ROLES, 'tool_call'])})"
    )


def calls_of(i: int, value: Any) -> list[dict]:
    """A function_call turn's value (JSON text of one call or a list of calls) as tool calls."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"turn {i}: a function call must be JSON ({error.msg})") from None
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(c, dict) for c in calls):
        raise ValueError(f"turn {i}: a function call must be an object with 'name' and 'arguments', or a list of them")
    return calls


def tool_schemas(tools: list[dict]) -> list[dict]:
    """Tools in the shape chat templates read, `{type: function, function: {...}}`: glaive-style bare function
    schemas (`{name, description, parameters}`) are wrapped."""
    return [{"type": "function", "function": t} if "name" in t and "function" not in t else t for t in tools]
