"""Generation metrics during training (training/generation_eval.py): answers to eval rows scored at every evaluation
as `sft eval` scores them, logged beside the eval loss, and followed by early stopping and the kept checkpoint."""

from __future__ import annotations

import json

import pytest
from conftest import ALPACA_ROWS, write_jsonl
from recipes import metrics, recipe_file

from sft_cli.errors import RecipeError
from sft_cli.recipe.schema import load_recipe
from sft_cli.training.generation_eval import GenerationEval
from sft_cli.training.run import train


def generating_recipe(tmp_path, tiny_path, **training):
    write_jsonl(tmp_path / "eval.jsonl", ALPACA_ROWS)
    settings = {"max_steps": 16, "eval_steps": 4, "save_steps": 4, "save_total_limit": 10,
                "eval_generate": {"rows": 4, "max_new_tokens": 8}, **training}  # fmt: skip
    return recipe_file(tmp_path, tiny_path, data={"eval_path": "eval.jsonl"}, training=settings)


def test_every_evaluation_logs_the_answers_scores(tmp_path, tiny_path):
    result = train(load_recipe(generating_recipe(tmp_path, tiny_path)))
    evaluations = [m for m in metrics(result.run_dir) if "eval_loss" in m]
    assert [m["step"] for m in evaluations] == [4, 8, 12, 16]
    for logged in evaluations:
        assert 0 <= logged["eval_exact_match"] <= logged["eval_contains"] <= 1 and logged["eval_generate_seconds"] > 0
    assert result.stop_reason == "completed"
    # the cost: timed before training in the plan, measured in run.json
    facts = json.loads((result.run_dir / "run.json").read_text())
    planned = facts["plan"]["eval_generate"]
    assert planned["rows"] == 4 and planned["evaluations"] == 4 and planned["seconds_per_evaluation"] > 0
    spent = sum(m["eval_generate_seconds"] for m in evaluations)
    assert facts["eval_generate_seconds"] == pytest.approx(spent, abs=0.1)


def test_early_stopping_follows_exact_match_and_keeps_its_best_checkpoint(tmp_path, tiny_path, monkeypatch):
    """A metric that improves, then worsens: the run stops after `patience` worse evaluations and keeps the
    checkpoint of the best one (the scores are scripted; the trainer, callbacks and checkpoints are real)."""
    scripted = iter([0.25, 0.75, 0.5, 0.25, 0.0, 0.0])

    def score(self, model, dataset, prefix):
        value = next(scripted)
        return {f"{prefix}_exact_match": value, f"{prefix}_contains": value, f"{prefix}_generate_seconds": 0.01}

    monkeypatch.setattr(GenerationEval, "score", score)
    early = {"metric": "eval_exact_match", "patience": 2}
    result = train(load_recipe(generating_recipe(tmp_path, tiny_path, max_steps=40, early_stopping=early)))
    assert result.stop_reason == "early_stopping"
    assert [m["eval_exact_match"] for m in metrics(result.run_dir) if "eval_loss" in m] == [0.25, 0.75, 0.5, 0.25]
    facts = json.loads((result.run_dir / "run.json").read_text())
    assert facts["best_metric"] == 0.75 and facts["global_step"] == 16
    state = json.loads((result.run_dir / "checkpoints" / "checkpoint-16" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith("checkpoint-8")


def test_eval_generate_needs_eval_rows_and_a_masked_loss(tmp_path, tiny_path):
    path = recipe_file(tmp_path, tiny_path, training={"eval_generate": {"rows": 4}})
    with pytest.raises(RecipeError, match="training.eval_generate needs eval data and loss: masked"):
        load_recipe(path)
