"""Batches: best-fit packing never splits or loses a sequence, the collator's padding-free layout, the batch plan,
and the loss of the same rows equal whether they travel padded, padding-free or packed."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import ALPACA_ROWS
from recipes import recipe_file

from sft_cli.encoding.encode import IGNORE
from sft_cli.recipe.schema import load_recipe
from sft_cli.training.batching import Collator, pack_bins, plan_batches
from sft_cli.training.run import setup_session


def test_pack_bins_best_fit_keeps_every_sequence_whole_and_fills_bins():
    assert pack_bins([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]  # 6+4 and 5+3+2: two full bins
    lengths = [random.Random(i).randint(1, 100) for i in range(500)]
    bins = pack_bins(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))  # each sequence once, none split
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert sum(lengths) / (len(bins) * 128) > 0.95  # best fit on many small items packs tightly


def test_collator_padding_free_layout():
    examples = [
        {"input_ids": [5, 6, 7], "labels": [5, 6, 7], "row": 3},
        {"input_ids": [8, 9], "labels": [IGNORE, 9], "row": 0},
    ]
    batch = Collator(pad_token_id=0, padding_free=True)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # no token is trained to follow the previous sequence's last token
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5] and batch["max_length_q"] == 3
    assert "attention_mask" not in batch
    padded = Collator(pad_token_id=0, padding_free=False)(examples)
    assert padded["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert padded["labels"].tolist() == [[5, 6, 7], [IGNORE, 9, IGNORE]]


def test_collator_reads_the_examples_of_packed_bins():
    import datasets

    source = datasets.Dataset.from_dict(
        {"input_ids": [[1], [2, 3, 4], [5, 6]], "labels": [[1], [2, 3, 4], [5, 6]], "row": [7, 2, 9]}
    )
    collator = Collator(pad_token_id=0, padding_free=True, source=source)
    batch = collator([{"members": [0, 1]}, {"members": [2]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6]]
    assert batch["position_ids"].tolist() == [[0, 0, 1, 2, 0, 1]] and collator.first_rows == [7, 2, 9]


def test_plan_reports_padding_and_packing():
    lengths = [10, 100] * 8
    padded, _ = plan_batches(lengths, 16, 1, "padded", 128, seed=0)  # one batch, padded to 100
    free, _ = plan_batches(lengths, 2, 1, "padding_free", 128, seed=0)
    packed, bins = plan_batches(lengths, 2, 1, "packed", 128, seed=0)
    assert padded.padding_share == pytest.approx(1 - 880 / 1600)
    assert free.padding_share == 0 and free.tokens_per_step == 110
    assert packed.items == len(bins) == 8 and packed.packing_efficiency == pytest.approx(880 / 1024, abs=1e-4)
    assert packed.examples_per_step == 4


@pytest.mark.parametrize("loss", ["masked", "unmasked"])
def test_loss_is_the_same_padded_padding_free_and_packed(tmp_path, tiny_path, loss):
    """The trainer's own loss over the same rows, whatever the layout (fp32, within 1e-5)."""
    layouts = {"padded": {"padding_free": False}, "padding_free": {}, "packed": {"packing": True}}
    losses = {}
    for name, training in layouts.items():
        path = recipe_file(
            tmp_path / name, tiny_path, rows=ALPACA_ROWS, loss=loss, training={"batch_size": 4, **training}
        )
        session = setup_session(load_recipe(path))
        trainer = session.trainer
        batch = next(iter(trainer.get_train_dataloader()))
        assert sorted(session.collator.first_rows) == [1, 2, 3, 4]  # every row (numbered from 1), one batch
        assert session.plan.batching.layout == name
        with torch.no_grad():
            losses[name] = trainer.compute_loss(trainer.model.eval(), dict(batch)).item()
    assert losses["padding_free"] == pytest.approx(losses["padded"], abs=1e-5)
    assert losses["packed"] == pytest.approx(losses["padded"], abs=1e-5)
