"""The recipe schema: errors with key paths and lines, did-you-mean, overrides, path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT

from sft_cli.errors import RecipeError
from sft_cli.recipe.schema import load_recipe
from sft_cli.recipe.yaml_lines import apply_overrides, parse_override


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "train.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


BASE = "model:\n  name: some/model\ndata:\n  path: train.jsonl\n"


def problems(path: Path, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides))
    return info.value.problems


def test_minimal_recipe_gets_defaults_and_resolves_paths(tmp_path):
    loaded = load_recipe(write(tmp_path, BASE))
    recipe = loaded.recipe
    assert recipe.template == "alpaca" and recipe.loss == "masked" and recipe.max_length == 1024
    assert recipe.data.path == str(tmp_path / "train.jsonl")  # relative to the recipe's folder
    assert recipe.model.name == "some/model"  # a hub id stays a hub id
    assert recipe.learning_rate == 2e-5 and loaded.name == "r"


def test_lora_default_learning_rate_is_higher(tmp_path):
    assert load_recipe(write(tmp_path, BASE + "lora: {r: 8}\n")).recipe.learning_rate == 2e-4


def test_unknown_key_names_line_and_suggests(tmp_path):
    found = problems(write(tmp_path, BASE + "traning:\n  learning_rate: 1.0e-4\n"))
    assert found == ["traning (r.yaml line 5): unknown key; did you mean 'training'?"]


def test_every_problem_reported_at_once(tmp_path):
    text = BASE + "loss: maskd\ntraining:\n  learning_rat: 1\n  epochs: -1\nmax_length: 2\n"
    found = problems(write(tmp_path, text))
    assert len(found) == 4, found
    joined = "\n".join(found)
    assert "loss (r.yaml line 5)" in joined
    assert "training.learning_rat (r.yaml line 7): unknown key; did you mean 'learning_rate'?" in joined
    assert "training.epochs (r.yaml line 8)" in joined
    assert "max_length (r.yaml line 9)" in joined


def test_missing_required_key(tmp_path):
    assert problems(write(tmp_path, "model:\n  name: x\n")) == ["data: required key is missing"]
    assert problems(write(tmp_path, "model: {}\ndata:\n  path: train.jsonl\n")) == [
        "model.name (r.yaml line 1): required key is missing"
    ]


@pytest.mark.parametrize("text, line", [("model: [\n", 2), ("model:\n  name: a\n   bad: 1\n", 3)])
def test_yaml_syntax_error_names_line(tmp_path, text, line):
    found = problems(write(tmp_path, text))
    assert len(found) == 1 and f"line {line}" in found[0] and "YAML syntax error" in found[0]


def test_duplicate_key_is_an_error(tmp_path):
    found = problems(write(tmp_path, BASE + "loss: masked\nloss: unmasked\n"))
    assert found == ["loss (line 6): duplicate key"]


def test_unknown_template_suggests(tmp_path):
    found = problems(write(tmp_path, BASE + "template: alpacca\n"))
    assert "did you mean 'alpaca'?" in found[0] and "line 5" in found[0]


def test_custom_template_and_its_errors(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE + "template:\n  prompt: 'Q: {instruction}\\nA: '\n")).recipe
    assert recipe.template.response == "{output}"
    found = problems(write(tmp_path, BASE + "template:\n  promt: x\n"))
    assert any("template.promt" in p and "did you mean 'prompt'" in p for p in found)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("training:\n  early_stopping: {patience: 2}\n", "early_stopping needs eval data"),
        (
            "data:\n  path: train.jsonl\n  eval_fraction: 0.1\ntraining:\n  early_stopping: {}\n  eval_steps: 10\n"
            "  save_steps: 15\n",
            "must be a multiple",
        ),
        ("training:\n  eval_steps: 5\n", "no eval data"),
        ("training:\n  packing: true\n  padding_free: false\n", "packing needs training.padding_free"),
    ],
)
def test_cross_field_checks_fail_before_training(tmp_path, extra, message):
    text = BASE.replace("data:\n  path: train.jsonl\n", "") if extra.startswith("data") else BASE
    found = problems(write(tmp_path, text + extra))
    assert any(message in p for p in found), found


def test_missing_local_data_file(tmp_path):
    found = problems(write(tmp_path, BASE.replace("train.jsonl", "nope.jsonl")))
    assert found == [f"data.path: not found: {tmp_path / 'nope.jsonl'}"]


def test_overrides_are_typed_and_nested(tmp_path):
    path = write(tmp_path, BASE)
    recipe = load_recipe(path, ["training.learning_rate=1e-4", "lora.r=4", "loss=unmasked"]).recipe
    assert recipe.training.learning_rate == 1e-4 and recipe.lora.r == 4 and recipe.loss == "unmasked"
    found = problems(path, ["training.epochz=2"])
    assert found == ["training.epochz (from --set): unknown key; did you mean 'epochs'?"]


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1"])
def test_bad_override_syntax(text):
    with pytest.raises(RecipeError, match="expected key.path=value"):
        parse_override(text)


def test_override_into_scalar_is_an_error():
    with pytest.raises(RecipeError, match="loss is not a section"):
        apply_overrides({"loss": "masked"}, ["loss.x=1"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "none.yaml")


def test_the_recipe_reference_is_the_starter_sft_init_writes():
    from sft_cli.recipe.starter import recipe_reference, starter_recipe

    page = (ROOT / "docs" / "recipe.md").read_text(encoding="utf-8")
    assert page == recipe_reference(), "docs/recipe.md is stale: run python scripts/write_recipe_reference.py"
    assert starter_recipe("alpaca") in page
