"""Row text marked for template rendering: control-token literals inside row strings are wrapped in private-use
characters (as transformers' `sanitize_control_tokens` does), so row text can never fake an end of turn; after
rendering, exactly those literals become `plain` segments, tokenized as text."""

from __future__ import annotations

import re
from typing import Any

from sft_cli.encoding.rendered import Segment

MARK_START, MARK_END = "\U000f0000", "\U000f0001"


def mark(value: Any, pattern: re.Pattern | None) -> Any:
    """Wrap control-token literals in row strings (recursively through lists and dicts) in private-use marks."""
    if pattern is None:
        return value
    if isinstance(value, str):
        value = value.replace(MARK_START, "").replace(MARK_END, "")
        return pattern.sub(lambda m: MARK_START + m.group(0) + MARK_END, value)
    if isinstance(value, dict):
        return {k: mark(v, pattern) for k, v in value.items()}
    if isinstance(value, list):
        return [mark(v, pattern) for v in value]
    return value


_MARKED = re.compile(f"{MARK_START}([^{MARK_START}{MARK_END}]*){MARK_END}|[{MARK_START}{MARK_END}]")


def unmark(text: str, kind: str) -> list[Segment]:
    """Segments of a marked text: each marked literal a `plain` segment, lone marks dropped."""
    segments, cursor = [], 0
    for match in _MARKED.finditer(text):
        if match.start() > cursor:
            segments.append(Segment(text[cursor : match.start()], kind))
        if match.group(1):
            segments.append(Segment(match.group(1), kind, plain=True))
        cursor = match.end()
    if cursor < len(text):
        segments.append(Segment(text[cursor:], kind))
    return segments
