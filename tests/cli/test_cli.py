"""The command line as a user meets it: exit codes, messages, the preview JSON contract, init, start-up cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ALPACA_ROWS, ROOT
from typer.testing import CliRunner

from sft_cli.cli.app import app

runner = CliRunner()


def test_validate_ok_and_summary(make_recipe, tiny_path):
    result = runner.invoke(app, ["validate", str(make_recipe(tiny_path))])
    assert result.exit_code == 0, result.output
    assert "is valid" in result.output and "masked loss" in result.output


def test_validate_error_is_exit_2_without_traceback(make_recipe, tiny_path):
    path = make_recipe(tiny_path, traning={"epochs": 1})
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "did you mean 'training'?" in result.output and "Traceback" not in result.output
    assert "hint:" in result.output


def test_set_override_on_command_line(make_recipe, tiny_path):
    result = runner.invoke(app, ["validate", str(make_recipe(tiny_path)), "--set", "loss=unmasked"])
    assert result.exit_code == 0 and "unmasked loss" in result.output
    result = runner.invoke(app, ["validate", str(make_recipe(tiny_path)), "--set", "loss=sometimes"])
    assert result.exit_code == 2 and "loss (from --set)" in result.output


def test_preview_json_contract(make_recipe, model_path):
    result = runner.invoke(app, ["preview", str(make_recipe(model_path)), "--json", "--limit", "2"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [e["index"] for e in doc["examples"]] == [1, 2]
    example = doc["examples"][0]
    assert set(example) == {"index", "text", "input_ids", "labels", "truncated"}
    assert len(example["input_ids"]) == len(example["labels"]) and -100 in example["labels"]
    assert example["text"].startswith("### Instruction:\nTranslate to French.")
    stats = doc["stats"]
    assert stats["examples"] == 4 and stats["dropped"] == 0 and stats["truncated"] == 0
    assert 0 < stats["trained_tokens"] < stats["total_tokens"]


def test_preview_shows_trained_tokens_with_a_cue_that_survives_no_colour(make_recipe, smollm2_path):
    result = runner.invoke(
        app,
        ["preview", str(make_recipe(smollm2_path)), "--index", "2", "--ids"],
        env={"NO_COLOR": "1", "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "row 2 · " in result.output and "trained tokens" in result.output
    assert "·Response(14212)|:(42)|↵(198)\n⟦The(504)|·Pacific(6125)|·Ocean(7357)|.(30)|<|im_end|>(2)⟧" in result.output


def test_preview_unknown_row(make_recipe, tiny_path):
    result = runner.invoke(app, ["preview", str(make_recipe(tiny_path)), "--index", "99"])
    assert result.exit_code == 2 and "no row 99" in result.output


def test_preview_bad_row_is_named(make_recipe, tiny_path):
    path = make_recipe(tiny_path, rows=ALPACA_ROWS + [{"instruction": "x", "output": 5}])
    result = runner.invoke(app, ["preview", str(path)])
    assert result.exit_code == 2 and "train.jsonl row 5: field 'output' must be text" in result.output


def test_chat_template_missing_is_clear(make_recipe, tmp_path, tiny_path):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_path, plain)
    (plain / "chat_template.jinja").unlink()
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["preview", str(make_recipe(plain, template="chat"))])
    assert result.exit_code == 2 and "has none" in result.output


@pytest.mark.parametrize("template", ["alpaca", "human_assistant", "special_tokens", "chat"])
def test_init_writes_a_recipe_that_validates_and_previews(tmp_path, tiny_path, template):
    target = tmp_path / "r.yaml"
    result = runner.invoke(app, ["init", "--template", template, "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert "# " in target.read_text() and (tmp_path / "data" / "example.jsonl").exists()
    assert runner.invoke(app, ["validate", str(target)]).exit_code == 0
    result = runner.invoke(app, ["preview", str(target), "--set", f"model.name={tiny_path}", "--json"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["init", "--output", str(target)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_init_keeps_existing_data(tmp_path):
    data = tmp_path / "data" / "example.jsonl"
    data.parent.mkdir()
    data.write_text("mine\n")
    assert runner.invoke(app, ["init", "--output", str(tmp_path / "r.yaml")]).exit_code == 0
    assert data.read_text() == "mine\n"


@pytest.mark.parametrize("args", [["--help"], ["validate", "RECIPE"]])
def test_help_and_validate_do_not_import_torch_or_transformers(make_recipe, tiny_path, args):
    recipe = make_recipe(tiny_path, trainer_args={"neftune_noise_alpha": 5})  # checked without importing TRL
    args = [str(recipe) if a == "RECIPE" else a for a in args]
    code = (
        "import sys; from sft_cli.cli.app import app\n"
        f"try: app({args!r})\nexcept SystemExit as e: assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets', 'peft') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_console_script_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sft_cli", "validate", str(tmp_path / "none.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "file not found" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate_and_preview(config, smollm2_path):
    assert runner.invoke(app, ["validate", str(config)]).exit_code == 0
    result = runner.invoke(app, ["preview", str(config), "--json", "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stats"]["examples"] > 0


def test_the_quickstart_selects_on_rows_it_neither_trains_on_nor_reports():
    """Early stopping and the kept checkpoint use data/tasks/valid.jsonl; the README's figures are scored on
    data/tasks/eval.jsonl, which must share no row with it or with the training rows."""
    from sft_cli.recipe.schema import load_recipe

    root = ROOT
    recipe = load_recipe(root / "configs" / "quickstart.yaml").recipe
    scored = root / "data" / "tasks" / "eval.jsonl"

    def pairs(path) -> set:
        return {(r["instruction"], r["input"]) for r in map(json.loads, Path(path).read_text().splitlines())}

    assert Path(recipe.data.eval_path).resolve() != scored.resolve()
    selected, trained = pairs(recipe.data.eval_path), pairs(recipe.data.path)
    assert len(selected) == 90 and len(pairs(scored)) == 120
    assert not selected & pairs(scored) and not selected & trained and not pairs(scored) & trained


def test_the_dataset_script_rebuilds_the_bundled_rows_and_extra_rows_leave_the_scored_ones_alone(tmp_path):
    """The README's quickstart figures stand on data/tasks: the generator must rebuild it byte for byte, and a larger
    training set (`--extra`, the README's more-rows experiment) must keep the eval and validation rows and extend
    the training rows with new instances only."""
    import subprocess
    import sys

    root = ROOT
    bundled = root / "data" / "tasks"
    for out, extra in ((tmp_path / "default", 0), (tmp_path / "extra", 300)):
        command = [sys.executable, str(root / "scripts" / "make_dataset.py"), "--out", str(out), "--extra", str(extra)]
        subprocess.run(command, check=True, capture_output=True)
    for name in ("train.jsonl", "eval.jsonl", "valid.jsonl"):
        assert (tmp_path / "default" / name).read_bytes() == (bundled / name).read_bytes(), name
    for name in ("eval.jsonl", "valid.jsonl"):
        assert (tmp_path / "extra" / name).read_bytes() == (bundled / name).read_bytes(), name
    train = (bundled / "train.jsonl").read_text().splitlines()
    longer = (tmp_path / "extra" / "train.jsonl").read_text().splitlines()
    assert longer[: len(train)] == train and len(longer) == len(train) + 300
    pairs = [(r["instruction"], r["input"]) for r in map(json.loads, longer)]
    scored = {
        (r["instruction"], r["input"])
        for name in ("eval.jsonl", "valid.jsonl")
        for r in map(json.loads, (bundled / name).read_text().splitlines())
    }
    assert len(set(pairs)) == len(pairs) and not set(pairs) & scored
