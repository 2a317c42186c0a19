"""Rows in: files or hub datasets -> normalised dicts, with column mapping and per-row validation."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from sft_cli.errors import DataError
from sft_cli.recipe import CustomTemplate, Recipe

FORMAT_FIELDS = {
    "alpaca": ("instruction", "input", "output"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
}
ROLES = ("system", "user", "assistant")


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
    """Read raw records from a local file/folder, or from the hub (needs internet) when the path is no file."""
    local = Path(path)
    suffix = local.suffix.lower()
    if local.is_file():
        if suffix == ".jsonl":
            return _read_jsonl(local)
        if suffix == ".json":
            return _read_json(local)
        if suffix == ".csv":
            with local.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(local).to_pylist()
        raise DataError(f"{path}: unsupported file type {suffix!r}", hint="use .jsonl .json .csv or .parquet")
    if local.is_dir():
        import datasets

        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{path}: no split {split!r}", hint=f"splits: {', '.join(loaded)} (data.split)")
            loaded = loaded[split]
        return loaded.to_list()
    if local.is_absolute() or path.startswith("."):
        raise DataError(f"{path}: not found")
    import datasets

    try:
        return datasets.load_dataset(path, split=split).to_list()
    except Exception as exc:  # the hub raises many types; the user needs the reason, not the trace
        raise DataError(f"{path}: cannot load from the Hugging Face hub: {exc}",
                        hint="check the dataset id and your network, or point data.path at a local file") from None


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {line_number}: invalid JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {line_number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {exc.lineno}: invalid JSON: {exc.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a list of objects (or {{\"data\": [...]}})")
    return data


def detect_format(record: dict, columns: dict[str, str], source: str) -> str:
    """Guess the format from the first record's keys (after column mapping)."""
    keys = {_reverse(columns).get(k, k) for k in record}
    if "messages" in keys:
        return "messages"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    raise DataError(
        f"{source}: cannot tell the data format from the columns {sorted(record)}",
        hint="set data.format (alpaca | prompt_completion | messages) and map columns with data.columns",
    )


def _reverse(columns: dict[str, str]) -> dict[str, str]:
    return {source: target for target, source in columns.items()}


def normalise(record: dict, fmt: str, columns: dict[str, str], keep_extra: bool) -> dict:
    """Rename mapped columns and turn the row into alpaca fields or `messages`; raise ValueError if malformed."""
    renamed = {_reverse(columns).get(k, k): v for k, v in record.items()}
    if fmt == "messages":
        return {"messages": _check_messages(renamed.get("messages"))}
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


def _check_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list of {role, content}")
    out = []
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"message {i}: role must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {i}: content must be text")
        out.append({"role": message["role"], "content": message["content"]})
    assistants = [m for m in out if m["role"] == "assistant"]
    if not assistants:
        raise ValueError("no assistant turn to train on")
    if any(not m["content"].strip() for m in assistants):
        raise ValueError("an assistant turn is empty")
    return out


def load_rows(recipe: Recipe, split: str = "train") -> Rows:
    """Load the train or eval rows of a recipe, normalised; bad rows raise or are skipped by `on_bad_row`."""
    data = recipe.data
    if split == "eval" and not recipe.has_eval:
        raise DataError("the recipe has no eval data", hint="set data.eval_path or data.eval_fraction")
    path = data.eval_path if split == "eval" and data.eval_path else data.path
    records = read_records(path, data.split)
    if not records:
        raise DataError(f"{path}: no rows")
    fmt = data.format or detect_format(records[0], data.columns, path)
    keep_extra = isinstance(recipe.template, CustomTemplate)
    rows, skipped = [], []
    for number, record in enumerate(records, 1):
        try:
            rows.append(Row(number, normalise(record, fmt, data.columns, keep_extra)))
        except ValueError as exc:
            if data.on_bad_row == "error":
                raise DataError(f"{path} row {number}: {exc}",
                                hint="fix the row, or set data.on_bad_row: skip to skip and count such rows") from None
            skipped.append((number, str(exc)))
    if data.eval_fraction and not data.eval_path:
        rows = _split(rows, data.eval_fraction, recipe.training.seed, split)
    if data.limit and split == "train":
        rows = rows[: data.limit]
    return Rows(rows, path, fmt, skipped)


def _split(rows: list[Row], fraction: float, seed: int, split: str) -> list[Row]:
    """A seeded split by row number, so train and eval never share a row and reruns agree."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * fraction))
    chosen = set(order[:n_eval]) if split == "eval" else set(order[n_eval:])
    return [row for i, row in enumerate(rows) if i in chosen]
