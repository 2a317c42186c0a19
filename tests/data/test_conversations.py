"""Conversation layouts as users find them (data/conversations.py): a ShareGPT file is detected from its columns,
previewed and trained with no converter; an unknown role is one error naming the file, row, role and the roles
seen, and `data.roles` maps it."""

from __future__ import annotations

import json

import yaml
from conftest import write_jsonl
from transformers import AutoTokenizer
from typer.testing import CliRunner

from sft_cli.cli.app import app

runner = CliRunner()

# OpenHermes-2.5 / SlimOrca layout: a `conversations` list of {from, value}, the system prompt as a turn
OPENHERMES_ROWS = [
    {
        "conversations": [
            {"from": "system", "value": "Answer in one word."},
            {"from": "human", "value": f"Capital number {i}?"},
            {"from": "gpt", "value": f"City{i}"},
            {"from": "human", "value": "And again?"},
            {"from": "gpt", "value": f"Town{i}"},
        ]
    }
    for i in range(12)
]


def sharegpt_recipe(tmp_path, model, rows, **data) -> str:
    write_jsonl(tmp_path / "chats.jsonl", rows)
    recipe = {
        "model": {"name": str(model)},
        "data": {"path": "chats.jsonl", **data},
        "template": "chat",
        "max_length": 256,
        "training": {"max_steps": 3, "batch_size": 4, "logging_steps": 1},
        "output": {"dir": "run"},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return str(tmp_path / "recipe.yaml")


def test_a_sharegpt_file_previews_and_trains_with_no_converter(tmp_path, tiny_smollm):
    recipe = sharegpt_recipe(tmp_path, tiny_smollm, OPENHERMES_ROWS)
    preview = runner.invoke(app, ["preview", recipe, "--json", "--limit", "1"])
    assert preview.exit_code == 0, preview.output
    [example] = json.loads(preview.stdout)["examples"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_smollm)
    trained = tokenizer.decode([i for i, label in zip(example["input_ids"], example["labels"]) if label != -100])
    assert trained == "City0<|im_end|>Town0<|im_end|>" and "Answer in one word." in example["text"]
    result = runner.invoke(app, ["train", recipe])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["stop_reason"] == "completed"


def test_an_unknown_role_is_one_error_and_data_roles_maps_it(tmp_path, tiny_smollm):
    rows = [*OPENHERMES_ROWS[:2], {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Yo"}]}]
    recipe = sharegpt_recipe(tmp_path, tiny_smollm, rows)
    result = runner.invoke(app, ["preview", recipe])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "chats.jsonl row 3: turn 2: role 'bot' is not one sft reads (this row's roles: human, bot)" in " ".join(
        result.output.split()
    )
    mapped = sharegpt_recipe(tmp_path, tiny_smollm, rows, roles={"bot": "assistant"})
    assert runner.invoke(app, ["preview", mapped]).exit_code == 0
    bad = sharegpt_recipe(tmp_path, tiny_smollm, rows, roles={"bot": "robot"})
    invalid = runner.invoke(app, ["validate", bad])
    assert invalid.exit_code == 2 and "data.roles.bot" in invalid.output, invalid.output
