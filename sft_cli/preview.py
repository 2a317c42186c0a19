"""What training will see: encoded examples, token by token, and dataset-wide stats. Returns data; never prints."""

from __future__ import annotations

from dataclasses import dataclass

from sft_cli.data import load_rows
from sft_cli.encode import IGNORE, Encoded, EncodedSet, encode_rows
from sft_cli.errors import SftError
from sft_cli.loading import load_tokenizer
from sft_cli.recipe import Recipe


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # the token's own text (decoded alone)
    trained: bool
    special: bool


@dataclass(frozen=True)
class ExampleView:
    example: Encoded
    tokens: list[Token]


@dataclass
class Preview:
    encoded: EncodedSet
    shown: list[ExampleView]
    split: str

    def as_json(self) -> dict:
        """The stable `sft preview --json` contract."""
        stats = self.encoded.stats
        return {
            "examples": [
                {"index": v.example.row, "text": v.example.text, "input_ids": v.example.input_ids,
                 "labels": v.example.labels, "truncated": v.example.truncated}
                for v in self.shown
            ],
            "stats": {**stats.as_dict(), "split": self.split},
            "warnings": [{"kind": w.kind, "message": w.message, "rows": w.rows[:20], "count": len(w.rows),
                          "detail": w.detail} for w in self.encoded.warnings],
        }


def token_view(example: Encoded, tokenizer) -> list[Token]:
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)}
    return [
        Token(i, tokenizer.decode([i]), label != IGNORE, i in special)
        for i, label in zip(example.input_ids, example.labels)
    ]


def build_preview(recipe: Recipe, split: str = "train", limit: int = 3, index: int | None = None) -> Preview:
    """Encode every row of the split (for the stats) and pick the examples to show."""
    tokenizer = load_tokenizer(recipe)
    rows = load_rows(recipe, split)
    encoded = encode_rows(rows, tokenizer, recipe)
    if index is not None:
        chosen = [e for e in encoded.examples if e.row == index]
        if not chosen:
            if index in encoded.stats.dropped_rows:
                raise SftError(f"row {index} was dropped by on_overflow: {recipe.on_overflow}",
                               hint="raise max_length or use on_overflow: truncate_prompt")
            raise SftError(f"no row {index} in {rows.source} ({split} split)",
                           hint=f"rows are numbered from 1; this split has {len(rows.rows)} usable rows")
    else:
        chosen = encoded.examples[:limit]
    return Preview(encoded, [ExampleView(e, token_view(e, tokenizer)) for e in chosen], split)
