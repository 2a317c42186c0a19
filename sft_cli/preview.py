"""What training will see: the first examples token by token, encoded from the first rows alone (so they show at
once, whatever the dataset's size), then dataset-wide stats and warnings from the prepared dataset (cached, or
built now). Returns data; never prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sft_cli.data import row_batches
from sft_cli.encode import IGNORE, Encoded, encode_rows
from sft_cli.errors import SftError
from sft_cli.loading import load_tokenizer
from sft_cli.prepared import Prepared, prepare_split
from sft_cli.progress import Progress
from sft_cli.recipe import Recipe
from sft_cli.rendered import RenderOptions
from sft_cli.stats import Stats, Warning
from sft_cli.templates import render_options


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
    shown: list[ExampleView]
    split: str
    prepared: Prepared

    @property
    def stats(self) -> Stats:
        return self.prepared.stats

    @property
    def warnings(self) -> list[Warning]:
        return self.prepared.warnings

    def as_json(self) -> dict:
        """The stable `sft preview --json` contract."""
        return {
            "examples": [
                {
                    "index": v.example.row,
                    "text": v.example.text,
                    "input_ids": v.example.input_ids,
                    "labels": v.example.labels,
                    "truncated": v.example.truncated,
                }
                for v in self.shown
            ],
            "stats": {**self.stats.as_dict(), "split": self.split, "cached": self.prepared.cached},
            "warnings": [w.as_dict() for w in self.warnings],
        }


def token_view(example: Encoded, tokenizer) -> list[Token]:
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
    }
    return [
        Token(i, tokenizer.decode([i]), label != IGNORE, i in special)
        for i, label in zip(example.input_ids, example.labels)
    ]


def first_examples(
    recipe: Recipe,
    tokenizer,
    split: str = "train",
    limit: int = 3,
    index: int | None = None,
    options: RenderOptions | None = None,
) -> list[Encoded]:
    """The first `limit` examples of a split (or those of row `index`), encoding only the rows it reads."""
    options = options or render_options(recipe, tokenizer)
    size = max(limit, 1) if index is None else 1000
    shown: list[Encoded] = []
    source = ""
    for rows in row_batches(recipe, split, size=size):
        source = rows.source
        if index is not None:
            rows.rows = [r for r in rows.rows if r.number == index]
            if not rows.rows:
                continue
            encoded = encode_rows(rows, tokenizer, recipe, diagnose=False, options=options)
            if not encoded.examples:
                raise SftError(
                    f"row {index} was dropped by on_overflow: {recipe.on_overflow}",
                    hint="raise max_length or use on_overflow: truncate_prompt",
                )
            return encoded.examples
        if len(shown) >= limit:
            break
        shown += encode_rows(rows, tokenizer, recipe, diagnose=False, options=options).examples
    if index is not None:
        raise SftError(
            f"no row {index} in {source or recipe.data.path} ({split} split)",
            hint="rows are numbered from 1; `sft preview` shows the split's row count",
        )
    return shown[:limit]


def build_preview(
    recipe: Recipe,
    split: str = "train",
    limit: int = 3,
    index: int | None = None,
    *,
    cache: bool = True,
    progress: Progress | None = None,
    on_examples: Callable[[list[ExampleView]], None] | None = None,
) -> Preview:
    """The examples to show (handed to `on_examples` as soon as they are encoded), then the split's prepared
    dataset for the stats."""
    tokenizer = load_tokenizer(recipe)
    options = render_options(recipe, tokenizer)
    examples = first_examples(recipe, tokenizer, split, limit, index, options)
    shown = [ExampleView(e, token_view(e, tokenizer)) for e in examples]
    if on_examples:
        on_examples(shown)
    prepared = prepare_split(recipe, tokenizer, split, cache=cache, progress=progress, options=options)
    if not cache:
        prepared.discard()  # its stats are read; the encoded rows are not kept
    return Preview(shown, split, prepared)
