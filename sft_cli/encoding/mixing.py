"""Several data sources as one training set. Each source is read, encoded and cached on its own (its prepared data
depends on its own keys only), then the encoded examples are mixed by weight, so changing a weight re-encodes
nothing.

The mix rule, deterministic from `training.seed`:
- A source's pool is its encoded training examples; with `max_rows`, a seeded sample of that many.
- Without weights every pool is taken whole. With weights (normalised to sum to 1) the epoch has as many examples
  as the pools together, and each source gets its share of them (rounded by largest remainder, so the shares are
  exact to one example).
- A source asked for fewer examples than its pool gives a seeded sample without replacement. Asked for more, it
  gives every example of its pool the same number of times, and a seeded sample without replacement for the rest:
  no example is repeated twice before every example is repeated once. That is reported as a warning.
- Each source's sample is seeded by the seed and its label, so adding or reweighting one source leaves the order
  the others draw in unchanged. The mix is drawn once per run; each epoch trains the same examples in a new order.

Evaluation stays per source: each source's eval rows are scored on their own (eval_<label>_loss) and together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_cli.encoding.cache import Prepared, prepare_split
from sft_cli.encoding.encode import IGNORE
from sft_cli.encoding.rendered import RenderOptions
from sft_cli.encoding.stats import Stats
from sft_cli.hub import dataset_commit
from sft_cli.progress import Progress
from sft_cli.recipe.schema import Recipe


@dataclass
class SourcePart:
    """One source in the mix: its one-source recipe, its prepared splits, and which of its examples train."""

    label: str
    recipe: Recipe
    prepared: dict[str, Prepared]
    weight: float | None = None
    taken: list[int] = field(default_factory=list)  # indices of its encoded train examples, repeats included
    tokens: int = 0  # tokens of the taken examples
    trained_tokens: int = 0

    @property
    def path(self) -> str:
        return self.recipe.data.path

    @property
    def examples(self) -> int:
        return self.prepared["train"].stats.examples

    def hub_revision(self) -> dict:
        """A hub dataset's configuration, revision as given, and the commit it resolved to (when the hub says)."""
        data = self.recipe.data
        if Path(data.path).exists():
            return {}
        return {"name": data.name, "revision": data.revision, "commit": dataset_commit(data.path, data.revision)}

    @property
    def repeats(self) -> int:
        """How many of the taken examples are repeats of one taken before."""
        return len(self.taken) - len(set(self.taken))


@dataclass
class Mix:
    """Every source's part, and the one training set they make."""

    parts: list[SourcePart]
    mixed: bool  # several sources (data.sources), as opposed to the one-source data.path

    @property
    def examples(self) -> int:
        return sum(len(p.taken) for p in self.parts)

    def train_dataset(self):
        """The training examples as one memory-mapped `datasets.Dataset` (no example is copied)."""
        if not self.mixed:
            return self.parts[0].prepared["train"].dataset()
        import datasets

        chosen = [p.prepared["train"].dataset().select(p.taken) for p in self.parts if p.taken]
        return datasets.concatenate_datasets(chosen)

    def eval_datasets(self):
        """None without eval data; the one eval set of a one-source recipe; else {label: eval set} of the sources
        that have one (scored one by one, and together)."""
        held = {p.label: p.prepared["eval"].dataset() for p in self.parts if "eval" in p.prepared}
        if not held:
            return None
        return held if self.mixed else next(iter(held.values()))

    def prepared(self) -> dict[str, Prepared]:
        """Every prepared split by name: `train`, `eval`; with several sources `train:<label>`, `eval:<label>`."""
        return {
            split if not self.mixed else f"{split}:{part.label}": prepared
            for part in self.parts
            for split, prepared in part.prepared.items()
        }

    def stats(self, split: str) -> Stats:
        """The sources' encoding stats together (rows read, dropped, truncated...), before mixing."""
        merged = Stats(max_length=self.parts[0].recipe.max_length)
        for part in self.parts:
            if split in part.prepared:
                merged.merge(part.prepared[split].stats)
        return merged

    def shares(self) -> list[dict]:
        """Per source: rows read, examples encoded, examples and tokens taken, weight and realised share."""
        total = self.examples or 1
        return [
            {
                "label": p.label,
                "path": p.path,
                **p.hub_revision(),
                "rows": p.prepared["train"].stats.rows,
                "examples": p.examples,
                "taken": len(p.taken),
                "repeats": p.repeats,
                "tokens": p.tokens,
                "trained_tokens": p.trained_tokens,
                "weight": p.weight,
                "share": round(len(p.taken) / total, 4),
                "eval_examples": p.prepared["eval"].stats.examples if "eval" in p.prepared else 0,
            }
            for p in self.parts
        ]

    def warnings(self) -> list[str]:
        return [
            f"source {p.label}: its weight asks for {len(p.taken):,} examples and it has {len(set(p.taken)):,}; "
            f"{p.repeats:,} are repeats (every example is used, none twice before all once)"
            for p in self.parts
            if p.repeats
        ]


@dataclass(frozen=True)
class PreparedData:
    """A recipe's data as train, prepare and the memory forecast see it: the tokenizer (with the template's tokens),
    the render options (stop tokens from the model's own files) and the mix of its prepared sources."""

    tokenizer: Any
    options: RenderOptions
    mix: Mix


def prepare_data(
    recipe: Recipe,
    splits: tuple[str, ...],
    *,
    cache: bool = True,
    root: str | Path | None = None,
    progress: Progress | None = None,
) -> PreparedData:
    """The one path from a recipe to its encoded data. (`sft preview` shows its first examples before the mix is
    prepared, so it takes the same two first steps itself.)"""
    from sft_cli.encoding.loading import load_tokenizer
    from sft_cli.encoding.templates import render_options

    tokenizer = load_tokenizer(recipe)
    options = render_options(recipe, tokenizer)
    mix = prepare_mix(recipe, tokenizer, splits, cache=cache, root=root, progress=progress, options=options)
    return PreparedData(tokenizer, options, mix)


def prepare_mix(
    recipe: Recipe,
    tokenizer,
    splits: tuple[str, ...],
    *,
    cache: bool = True,
    root: str | Path | None = None,
    progress: Progress | None = None,
    options: RenderOptions | None = None,
) -> Mix:
    """Prepare every source's splits (each cached on its own) and draw the mix of their train examples."""
    parts = []
    weights = {entry.label: entry.weight for entry in recipe.data.sources}
    for label, source in recipe.sources():
        prepared = {
            split: prepare_split(source, tokenizer, split, cache=cache, root=root, progress=progress, options=options)
            for split in splits
            if split == "train" or source.has_eval
        }
        parts.append(SourcePart(label, source, prepared, weights.get(label)))
    mix = Mix(parts, recipe.mixed)
    if "train" in splits:
        draw(mix, recipe)
    return mix


def draw(mix: Mix, recipe: Recipe) -> None:
    """Fill each part's `taken` examples (and their token counts) by the rule in this module's docstring."""
    caps = {entry.label: entry.max_rows for entry in recipe.data.sources}
    seed = recipe.training.seed
    pools = [_sample(p.examples, caps.get(p.label), random.Random(f"{seed}:{p.label}:pool")) for p in mix.parts]
    if all(p.weight is None for p in mix.parts):
        wanted = [len(pool) for pool in pools]
    else:
        wanted = shares_of(sum(len(pool) for pool in pools), [p.weight for p in mix.parts])
    for part, pool, count in zip(mix.parts, pools, wanted):
        part.taken = _take(pool, count, random.Random(f"{seed}:{part.label}:take")) if mix.mixed else pool
        if part.taken:
            lengths, trained = _token_counts(part.prepared["train"].dataset())
            part.tokens = sum(lengths[i] for i in part.taken)
            part.trained_tokens = sum(trained[i] for i in part.taken)


def shares_of(total: int, weights: list[float]) -> list[int]:
    """`total` split in proportion to `weights`, by largest remainder: the counts add up to `total` exactly."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _sample(available: int, cap: int | None, rng: random.Random) -> list[int]:
    if cap is None or cap >= available:
        return list(range(available))
    return sorted(rng.sample(range(available), cap))


def _take(pool: list[int], count: int, rng: random.Random) -> list[int]:
    """`count` examples of the pool: a sample without replacement, or the whole pool repeated and a sample of it
    for the rest."""
    if not pool:
        return []
    whole, rest = divmod(count, len(pool))
    return pool * whole + sorted(rng.sample(pool, rest))


def _token_counts(dataset) -> tuple[list[int], list[int]]:
    """Each example's token count and trained-token count, from the Arrow columns chunk by chunk, without
    decoding rows."""
    import numpy as np
    import pyarrow.compute as pc

    lengths, trained = [], []
    for chunk in dataset.with_format("arrow")["labels"].chunks:
        flags = pc.not_equal(pc.list_flatten(chunk), IGNORE).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(chunk).to_numpy()
        lengths += pc.list_value_length(chunk).to_numpy().tolist()
        trained += np.bincount(parents, weights=flags, minlength=len(chunk)).astype(int).tolist()
    return lengths, trained
