"""What training will see: the first examples token by token, encoded from the first rows alone (so they show at
once, whatever the dataset's size), then dataset-wide stats and warnings from the prepared dataset (cached, or
built now). With several sources: the first example of each, each source's rows, examples, tokens and realised
share of the mix, and the stats of them all. Returns data; never prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sft_cli.data.rows import row_batches
from sft_cli.encoding.encode import IGNORE, Encoded, encode_rows
from sft_cli.encoding.loading import load_tokenizer
from sft_cli.encoding.mixing import Mix, prepare_mix
from sft_cli.encoding.rendered import RenderOptions
from sft_cli.encoding.stats import DataWarning, Stats
from sft_cli.encoding.templates import render_options
from sft_cli.errors import SftError
from sft_cli.progress import Progress
from sft_cli.recipe.schema import Recipe


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
    source: str = ""  # the source's label, with several sources


@dataclass
class Preview:
    shown: list[ExampleView]
    split: str
    mix: Mix

    @property
    def stats(self) -> Stats:
        return self.mix.stats(self.split)

    @property
    def cached(self) -> bool:
        return all(p.cached for p in self.mix.prepared().values())

    @property
    def warnings(self) -> list[tuple[str, DataWarning]]:
        """(source label, warning): the label is empty for a one-source recipe."""
        return [
            (part.label if self.mix.mixed else "", warning)
            for part in self.mix.parts
            if self.split in part.prepared
            for warning in part.prepared[self.split].warnings
        ]

    def as_dict(self) -> dict:
        """The stable `sft preview --json` contract (`source` keys and `sources` with several sources)."""
        mixed = self.mix.mixed
        document = {
            "examples": [
                {
                    **({"source": v.source} if mixed else {}),
                    "index": v.example.row,
                    "text": v.example.text,
                    "input_ids": v.example.input_ids,
                    "labels": v.example.labels,
                    "truncated": v.example.truncated,
                }
                for v in self.shown
            ],
            "stats": {**self.stats.as_dict(), "split": self.split, "cached": self.cached},
            "warnings": [{**({"source": label} if mixed else {}), **w.as_dict()} for label, w in self.warnings],
        }
        if mixed:
            document["sources"] = self.mix.shares() if self.split == "train" else self._eval_counts()
            document["mix_warnings"] = self.mix.warnings() if self.split == "train" else []
        return document

    def _eval_counts(self) -> list[dict]:
        return [
            {"label": p.label, "path": p.path, "rows": p.prepared["eval"].stats.rows,
             "examples": p.prepared["eval"].stats.examples}
            for p in self.mix.parts
            if "eval" in p.prepared
        ]  # fmt: skip


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
    source: str | None = None,
    cache: bool = True,
    progress: Progress | None = None,
    on_examples: Callable[[list[ExampleView]], None] | None = None,
) -> Preview:
    """The examples to show (handed to `on_examples` as soon as they are encoded), then the split's prepared
    datasets for the stats. With several sources: the first example of each (`source`: that source alone, as
    if it were the recipe's only one)."""
    recipe = one_source(recipe, source) if source else recipe
    if recipe.mixed and index is not None:
        raise SftError("--index: rows are numbered per source", hint="add --source LABEL to pick the source")
    sources = recipe.sources()
    if split == "eval" and not recipe.has_eval:
        raise SftError("the recipe has no eval data", hint="set data.eval_path or data.eval_fraction")
    tokenizer = load_tokenizer(recipe)
    options = render_options(recipe, tokenizer)
    shown = []
    for label, single in sources:
        if split == "eval" and not single.has_eval:
            continue
        count = min(limit, 1) if recipe.mixed else limit
        examples = first_examples(single, tokenizer, split, count, index, options)
        shown += [ExampleView(e, token_view(e, tokenizer), label if recipe.mixed else "") for e in examples]
    if on_examples:
        on_examples(shown)
    mix = prepare_mix(recipe, tokenizer, (split,), cache=cache, progress=progress, options=options)
    if not cache:
        for prepared in mix.prepared().values():
            prepared.discard()  # its stats are read; the encoded rows are not kept
    return Preview(shown, split, mix)


def one_source(recipe: Recipe, label: str) -> Recipe:
    """The recipe with one of its sources as its only data (`--source LABEL`)."""
    sources = dict(recipe.sources())
    if label not in sources:
        known = ", ".join(sources) if recipe.mixed else "none: the recipe reads one data.path"
        raise SftError(f"--source: no source labelled {label!r}", hint=f"sources: {known}")
    return sources[label]
