"""`training.compile`: the decoder layers compiled with dynamic shapes train as the eager model does, do not
recompile for every new batch shape, and save a model that loads without sft."""

from __future__ import annotations

import json

import pytest
import torch
from recipes import metrics, recipe_file
from transformers import AutoModelForCausalLM

from sft_cli.recipe.schema import load_recipe
from sft_cli.training.run import train

ROWS = [  # answers of many lengths: every padding-free batch has its own token count
    {"instruction": f"Count to {n}.", "input": "", "output": " ".join(str(i) for i in range(1, n + 1))}
    for n in range(1, 25)
]


def run(tmp_path, tiny_path, name: str, steps: int, compiled: bool):
    folder = tmp_path / name
    folder.mkdir()
    training = {"max_steps": steps, "save_steps": 100, "compile": compiled}
    result = train(load_recipe(recipe_file(folder, tiny_path, rows=ROWS, training=training)))
    return result.run_dir, json.loads((result.run_dir / "run.json").read_text())


@pytest.mark.slow
def test_compiled_layers_train_as_eager_ones_without_recompiling_per_step(tmp_path, tiny_path):
    eager_dir, eager = run(tmp_path, tiny_path, "eager", 6, compiled=False)
    compiled_dir, compiled = run(tmp_path, tiny_path, "compiled", 6, compiled=True)
    _, short = run(tmp_path, tiny_path, "short", 2, compiled=True)

    assert eager["compile"] is None
    losses = [m["loss"] for m in metrics(eager_dir) if "loss" in m]
    compiled_losses = [m["loss"] for m in metrics(compiled_dir) if "loss" in m]
    assert len(losses) == len(compiled_losses) == 6
    assert compiled_losses == pytest.approx(losses, rel=1e-4)

    tokens = {m["trained_tokens_per_step"] for m in metrics(compiled_dir) if "trained_tokens_per_step" in m}
    assert len(tokens) > 2, "the steps must differ in shape for the recompile check to mean anything"
    assert compiled["compile"]["graphs"] > 0
    assert compiled["compile"] == short["compile"], "six batch shapes compiled no more graphs than two"

    saved = AutoModelForCausalLM.from_pretrained(compiled_dir)  # plain names: no `_orig_mod.` prefixes
    reference = AutoModelForCausalLM.from_pretrained(eager_dir)
    for (name, weight), (other, expected) in zip(saved.state_dict().items(), reference.state_dict().items()):
        assert name == other
        torch.testing.assert_close(weight, expected, rtol=1e-3, atol=1e-5)
