"""The chunked loss equals transformers' own loss, with equal gradients, and training with it equals training
without it."""

from __future__ import annotations

import json

import pytest
import torch
from recipes import recipe_file
from transformers import AutoModelForCausalLM

import sft_cli.training.chunked_loss as chunked
from sft_cli.encoding.encode import IGNORE
from sft_cli.recipe.schema import load_recipe
from sft_cli.training.chunked_loss import chunked_loss, head_of, hidden_states_out
from sft_cli.training.run import train


def padding_free_batch(vocab: int, lengths=(9, 14, 5, 20), seed=0):
    """One row of several sequences (positions restarting), the first half of each sequence untrained."""
    generator = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for n in lengths:
        sequence = torch.randint(3, vocab, (n,), generator=generator)
        label = sequence.clone()
        label[: n // 2] = IGNORE
        ids.append(sequence)
        labels.append(label)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return torch.cat(ids)[None], torch.cat(labels)[None], positions


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("frozen_head", [False, True])
@pytest.mark.parametrize("num_items", [None, 23])
def test_loss_and_gradients_equal_transformers_loss(tiny_path, monkeypatch, frozen_head, num_items):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 7 * 1000)  # several chunks even for a few tokens
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    head = head_of(model)
    head.weight.requires_grad_(not frozen_head)
    ids, labels, positions = padding_free_batch(model.config.vocab_size)
    items = torch.tensor(num_items) if num_items else None

    reference = model(input_ids=ids, labels=labels, position_ids=positions, use_cache=False, num_items_in_batch=items)
    reference.loss.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)

    with hidden_states_out(head):
        hidden = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert hidden.shape[-1] == model.config.hidden_size  # the head passed its input through
    loss, trained, correct = chunked_loss(hidden, head, labels, items)
    loss.backward()
    got = grads(model)

    assert loss.item() == pytest.approx(reference.loss.item(), abs=1e-5)
    assert trained == int((labels[..., 1:] != IGNORE).sum())
    assert set(got) == set(expected) and ("lm_head.weight" in got) != frozen_head
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, atol=1e-5, rtol=1e-4), name
    logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, :-1]
    shifted = labels[0, 1:]
    assert int(correct) == int((logits[shifted != IGNORE].argmax(-1) == shifted[shifted != IGNORE]).sum())
    assert model.lm_head(hidden[0, :1]).shape[-1] == model.config.vocab_size  # the head is itself again


def test_a_batch_with_no_trained_token_gives_zero_gradients_and_a_second_backward_is_refused(tiny_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    head = head_of(model)
    ids, labels, positions = padding_free_batch(model.config.vocab_size)
    with hidden_states_out(head):
        hidden = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    loss, trained, _ = chunked_loss(hidden, head, torch.full_like(labels, IGNORE))
    loss.backward(retain_graph=True)
    assert trained == 0 and loss.item() == 0.0
    assert head.weight.grad is not None and not head.weight.grad.any()
    # backward scales the stored gradients in place (no fresh vocabulary x width tensor each step): a second
    # backward through the same graph would scale them twice, so it fails instead of returning wrong gradients
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()


def test_models_whose_logits_are_more_than_the_heads_product_keep_their_loss(tiny_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    assert head_of(model) is not None
    model.config.final_logit_softcapping = 30.0
    assert head_of(model) is None


def test_training_with_the_chunked_loss_equals_training_without(tmp_path, tiny_path):
    runs = {}
    for chunked_on in (True, False):
        folder = tmp_path / str(chunked_on)
        folder.mkdir()
        training = {"max_steps": 6, "gradient_accumulation_steps": 2, "chunked_loss": chunked_on}
        run_dir = train(load_recipe(recipe_file(folder, tiny_path, training=training))).run_dir
        plan = json.loads((run_dir / "run.json").read_text())["plan"]
        assert plan["environment"]["loss"] == ("chunked" if chunked_on else "full logits")
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        runs[chunked_on] = [json.loads(line) for line in lines if '"loss"' in line]
    for on, off in zip(runs[True], runs[False]):
        assert on["loss"] == pytest.approx(off["loss"], abs=1e-4)
        assert on["grad_norm"] == pytest.approx(off["grad_norm"], rel=1e-3)
        assert on["mean_token_accuracy"] == pytest.approx(off["mean_token_accuracy"])
