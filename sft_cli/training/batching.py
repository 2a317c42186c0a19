"""Training batches: padding-free (a batch's sequences concatenated into one row, positions restarting at each,
attention kept inside each sequence by `attention.py`), padded (the classic layout), and optional packing of
short sequences into bins of `max_length` tokens (best fit, never split).

Padding-free is the default because a padded batch spends compute on padding in proportion to the spread of its
lengths; on instruction data (answers from a few to hundreds of tokens) that is most of a step.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

from sft_cli.encoding.encode import IGNORE


def sequence_lengths(dataset) -> list[int]:
    """Token count of every encoded example, read from the Arrow column without decoding the rows."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.with_format("arrow")["input_ids"]).to_pylist()


def pack_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: each sequence, longest first, goes into the fullest bin it still fits in. Sequences are
    never split (each is at most `capacity` long: encoding enforced max_length). Deterministic for given lengths."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin number), sorted
    for index in order:
        size = lengths[index]
        at = bisect.bisect_left(free, (size, -1))
        if at == len(free):
            bins.append([index])
            room, number = capacity - size, len(bins) - 1
        else:
            room, number = free.pop(at)
            bins[number].append(index)
            room -= size
        if room > 0:
            bisect.insort(free, (room, number))
    return [sorted(b) for b in bins]


def bins_dataset(bins: list[list[int]]):
    """The packed training set: one item per bin, holding its examples' indices; the collator reads the examples
    (TRL's trainer takes only a `datasets.Dataset`, and the encoded rows stay memory-mapped, never copied)."""
    import datasets

    return datasets.Dataset.from_dict({"members": bins})


class Collator:
    """Turns examples (or packed bins, whose examples it reads from `source`) into one batch. It also notes the
    source rows of the first batch (run.json shows which rows each process got first, so distributed runs can be
    checked)."""

    def __init__(self, pad_token_id: int, padding_free: bool, source=None):
        self.pad_token_id, self.padding_free, self.source = pad_token_id, padding_free, source
        self.first_rows: list[int] | None = None

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        if "members" in examples[0]:  # packed bins: each bin's examples, one after the other
            members = self.source[[i for e in examples for i in e["members"]]]
            examples = [dict(zip(members, values)) for values in zip(*members.values())]
        if self.first_rows is None:
            self.first_rows = [e["row"] for e in examples]
        sequences = [(list(e["input_ids"]), list(e["labels"])) for e in examples]
        if not self.padding_free:
            return padded_batch(sequences, self.pad_token_id)
        lengths = [len(ids) for ids, _ in sequences]
        labels = [[IGNORE] + list(labs[1:]) for _, labs in sequences]  # a start is never predicted across sequences
        bounds = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return {
            "input_ids": torch.tensor([[t for ids, _ in sequences for t in ids]]),
            "labels": torch.tensor([[t for labs in labels for t in labs]]),
            "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
            # sequence boundaries for varlen attention kernels (flash-attention, sft's own on CPU)
            "cu_seq_lens_q": bounds,
            "cu_seq_lens_k": bounds,
            "max_length_q": max(lengths),
            "max_length_k": max(lengths),
        }


def padded_batch(sequences: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict:
    """Right-padded rows with an attention mask; padding is never trained."""
    import torch

    width = max(len(ids) for ids, _ in sequences)
    fill = [width - len(ids) for ids, _ in sequences]
    return {
        "input_ids": torch.tensor([list(ids) + [pad_token_id] * f for (ids, _), f in zip(sequences, fill)]),
        "labels": torch.tensor([list(labs) + [IGNORE] * f for (_, labs), f in zip(sequences, fill)]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * f for (ids, _), f in zip(sequences, fill)]),
    }


@dataclass(frozen=True)
class BatchPlan:
    """How a run's batches are shaped, known before the first step (printed by --dry-run, kept in run.json)."""

    layout: str  # padding_free | padded | packed
    examples_per_step: float  # sequences per optimizer step on one process (mean, for packed bins)
    tokens_per_step: float  # real tokens per optimizer step on one process (mean)
    padding_share: float  # share of the computed positions that are padding
    packing_efficiency: float | None  # packed: real tokens / (bins x max_length)
    items: int  # what the sampler draws: examples, or bins when packed


def plan_batches(
    lengths: list[int], batch_size: int, accumulation: int, layout: str, max_length: int, seed: int
) -> tuple[BatchPlan, list[list[int]] | None]:
    """The batch plan and, for packing, the bins. The padded layout's padding share is measured on one seeded
    shuffle of the real lengths (the trainer's own order differs, not the distribution)."""
    bins = pack_bins(lengths, max_length) if layout == "packed" else None
    total = sum(lengths)
    items = len(bins) if bins is not None else len(lengths)
    per_item = total / max(items, 1)
    padding, efficiency = 0.0, None
    if layout == "padded":
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
        width = sum(
            max(lengths[i] for i in order[s : s + batch_size]) * len(order[s : s + batch_size])
            for s in range(0, len(order), batch_size)
        )
        padding = 1 - total / width if width else 0.0
    if bins is not None:
        efficiency = total / (len(bins) * max_length) if bins else 0.0
    sequences_per_item = len(lengths) / max(items, 1)
    plan = BatchPlan(
        layout,
        round(batch_size * accumulation * sequences_per_item, 2),
        round(batch_size * accumulation * per_item, 1),
        round(padding, 4),
        round(efficiency, 4) if efficiency is not None else None,
        items,
    )
    return plan, bins
