"""Dataset statistics: counts, warnings with their rows, and a token-length histogram. Computed per batch of rows
(in worker processes too) and merged, so they stay small whatever the dataset's size: row lists keep their first
`ROWS_KEPT` entries and a count."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ROWS_KEPT = 20
BUCKETS = 10  # equal-width buckets up to max_length, then one for longer examples

WARNING_TEXT = {
    "boundary_merge": "tokenizing the whole text would merge across the prompt/answer boundary; sft tokenizes "
    "prompt and answer separately (the prompt exactly as at inference), so the answer starts on a fresh token",
    "marker_in_context": "the response marker tokenizes differently inside the prompt than alone; masking is by "
    "text position, so the mask is right, but a collator that searches for the marker's tokens would miss it",
    "answer_leading_space": "the answer starts with whitespace: the model learns to emit it first",
    "answer_trailing_space": "the answer ends with whitespace before the end token",
    "prompt_trailing_space": "the prompt ends with a space or tab: the answer's first word is trained without "
    "its usual leading space",
    "special_token_in_text": "row text contains a special token's literal text; it is tokenized as plain text "
    "(special_tokens_in_text: plain) or as the control token (control)",
    "tool_calls_dropped": "the chat template does not write this turn's tool calls: the turn trains without them, "
    "and a turn left empty is not trained (it would teach the model to answer a tool request with nothing)",
    "reasoning_dropped": "the chat template does not write this turn's reasoning, so it is not trained; a template "
    "variable may switch it on (chat.template_kwargs, e.g. enable_thinking: true)",
    "ends_without_answer": "the chat ends with a user or tool turn after its last assistant answer: those last "
    "turns are not trained (end the row with the assistant's answer, or drop them)",
    "end_token_missing": "the trained tokens do not end with an end token (EOS / end of turn): generation won't stop",
    "tool_call_without_stop": "a tool call that no stop token ends (the tool's output follows in the same turn, and "
    "the model's stop tokens do not include the token after the call): not trained, or the model would learn to "
    "run on into the tool's output",
}


@dataclass
class DataWarning:
    """One kind of trap, the first rows that have it, and how many rows do."""

    kind: str
    rows: list[int] = field(default_factory=list)
    detail: str = ""
    count: int = 0

    @property
    def message(self) -> str:
        return WARNING_TEXT[self.kind]

    def add(self, row: int) -> None:
        if row in self.rows[-1:]:  # a chat row's several examples count once
            return
        self.count += 1
        if len(self.rows) < ROWS_KEPT:
            self.rows.append(row)

    def merge(self, other: DataWarning) -> None:
        self.count += other.count
        self.rows = (self.rows + other.rows)[:ROWS_KEPT]
        self.detail = self.detail or other.detail

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "rows": self.rows,
            "count": self.count,
            "detail": self.detail,
        }


@dataclass
class Stats:
    rows: int = 0
    examples: int = 0
    dropped: int = 0
    truncated: int = 0
    skipped: int = 0
    split_turns: int = 0
    split_documents: int = 0  # plain-text documents longer than max_length, split into windows
    windows: int = 0  # the examples those documents became
    trained_tokens: int = 0
    total_tokens: int = 0
    max_tokens: int = 0
    max_length: int = 0
    lengths: list[int] = field(default_factory=lambda: [0] * (BUCKETS + 1))  # examples per length bucket
    dropped_rows: list[int] = field(default_factory=list)
    skipped_rows: list[tuple[int, str]] = field(default_factory=list)

    @property
    def mean_tokens(self) -> float:
        return self.total_tokens / self.examples if self.examples else 0.0

    @property
    def trained_share(self) -> float:
        return self.trained_tokens / self.total_tokens if self.total_tokens else 0.0

    def count_length(self, tokens: int) -> None:
        """An example's length before the overflow policy, in the histogram."""
        width = max(self.max_length // BUCKETS, 1)
        self.lengths[min((max(tokens, 1) - 1) // width, BUCKETS - 1) if tokens <= self.max_length else BUCKETS] += 1

    def drop(self, row: int) -> None:
        self.dropped += 1
        if len(self.dropped_rows) < ROWS_KEPT:
            self.dropped_rows.append(row)

    def skip(self, row: int, reason: str) -> None:
        self.skipped += 1
        if len(self.skipped_rows) < ROWS_KEPT:
            self.skipped_rows.append((row, reason))

    def merge(self, other: Stats) -> None:
        for name in (
            "rows",
            "examples",
            "dropped",
            "truncated",
            "skipped",
            "split_turns",
            "split_documents",
            "windows",
            "trained_tokens",
            "total_tokens",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_tokens = max(self.max_tokens, other.max_tokens)
        self.max_length = self.max_length or other.max_length
        self.lengths = [a + b for a, b in zip(self.lengths, other.lengths)]
        self.dropped_rows = (self.dropped_rows + other.dropped_rows)[:ROWS_KEPT]
        self.skipped_rows = (self.skipped_rows + other.skipped_rows)[:ROWS_KEPT]

    def histogram(self) -> dict[str, Any]:
        """Examples per token-length bucket (before the overflow policy), against max_length."""
        width = max(self.max_length // BUCKETS, 1)
        edges = [width * k for k in range(BUCKETS)] + [self.max_length]
        return {"edges": edges, "counts": self.lengths[:BUCKETS], "over_max_length": self.lengths[BUCKETS]}

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "examples": self.examples,
            "dropped": self.dropped,
            "truncated": self.truncated,
            "skipped": self.skipped,
            "split_turns": self.split_turns,
            "split_documents": self.split_documents,
            "windows": self.windows,
            "trained_tokens": self.trained_tokens,
            "total_tokens": self.total_tokens,
            "trained_share": round(self.trained_share, 4),
            "mean_tokens": round(self.mean_tokens, 1),
            "max_tokens": self.max_tokens,
            "max_length": self.max_length,
            "histogram": self.histogram(),
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, for the prepared dataset's stats.json."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Stats:
        data = dict(data)
        data["skipped_rows"] = [tuple(x) for x in data.get("skipped_rows", [])]
        return cls(**data)


def merge_warnings(into: dict[str, DataWarning], warnings: list[DataWarning]) -> None:
    for warning in warnings:
        if warning.kind in into:
            into[warning.kind].merge(warning)
        else:
            into[warning.kind] = DataWarning(warning.kind, list(warning.rows), warning.detail, warning.count)
