"""`sft init --from`: the peers' own example configs (tests/recipe/peer_configs/, in the shape Axolotl and LLaMA-Factory
ship them, with a local model and data in place of hub ones) become recipes `sft validate` accepts, every key with no
place in a recipe listed at the top of it and on stderr."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ALPACA_ROWS, write_jsonl
from typer.testing import CliRunner

from sft_cli.cli.app import app

runner = CliRunner()
PEERS = Path(__file__).parent / "peer_configs"
CHAT = [{"conversation": [{"role": "human", "content": f"Hi {i}"}, {"role": "bot", "content": f"Hello {i}"}]}
        for i in range(8)]  # fmt: skip
GLAIVE = {
    "conversations": [
        {"from": "human", "value": "Convert 500 USD to EUR."},
        {"from": "function_call", "value": '{"name": "convert", "arguments": {"amount": 500}}'},
        {"from": "observation", "value": '{"eur": 425.5}'},
        {"from": "gpt", "value": "About 425.50 EUR."},
    ],
    "tools": '[{"name": "convert", "description": "Convert money", "parameters": {"type": "object"}}]',
}


def peer_folder(tmp_path: Path, model: Path, monkeypatch) -> Path:
    """The peer configs with this machine's model, and their data files, in a folder that is the working directory
    (Axolotl reads local datasets relative to where it runs)."""
    folder = tmp_path / "peers"
    shutil.copytree(PEERS, folder)
    for config in [*folder.glob("*.yml"), *folder.glob("*/*.yaml")]:
        config.write_text(config.read_text().replace("MODEL", str(model)))
    write_jsonl(folder / "alpaca_demo.jsonl", ALPACA_ROWS * 3)
    write_jsonl(folder / "chats.jsonl", CHAT)
    data = folder / "llama_factory" / "data"
    (data / "identity.json").write_text(json.dumps(ALPACA_ROWS))
    (data / "alpaca_en_demo.json").write_text(json.dumps(ALPACA_ROWS * 2))
    (data / "glaive_toolcall_en_demo.json").write_text(json.dumps([GLAIVE] * 4))
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize(
    ("config", "expected", "unmapped"),
    [
        (
            "axolotl-lora-1b.yml",
            {"template": "alpaca", "max_length": 2048, "loss": "masked", "data.format": "alpaca",
             "data.eval_fraction": 0.1, "lora.r": 16, "lora.alpha": 32, "training.packing": True,
             "training.batch_size": 2, "training.gradient_accumulation_steps": 2, "training.learning_rate": 0.0002,
             "training.lr_scheduler": "cosine", "training.epochs": 1},
            ["optimizer: \"adamw_8bit\"", "warmup_steps: 10", "flash_attention: true", "special_tokens:"],
        ),
        (
            "axolotl-instruct-lora-8b.yml",
            {"template": "chat", "data.format": "messages", "data.columns": {"messages": "conversation"},
             "data.roles": {"human": "user", "bot": "assistant"}, "lora.target_modules": "all-linear",
             "lora.r": 32, "max_length": 4096},
            ["chat_template: \"llama3\" (sft uses the tokenizer's own chat template)", "load_in_8bit: true"],
        ),
        (
            "llama_factory/llama3_lora_sft.yaml",
            {"template": "chat", "model.trust_remote_code": True, "lora.r": 8, "lora.alpha": 16,
             "lora.target_modules": "all-linear", "max_length": 2048, "data.sources.2.limit": 1000,
             "training.batch_size": 1, "training.warmup_ratio": 0.1, "trainer_args.ddp_timeout": 180000000},
            ["template: \"llama3\"", "preprocessing_num_workers: 16", "plot_loss: true"],
        ),
    ],
)  # fmt: skip
def test_a_peers_config_becomes_a_recipe_that_validates(tmp_path, tiny_smollm, monkeypatch, config, expected, unmapped):
    folder = peer_folder(tmp_path, tiny_smollm, monkeypatch)
    output = tmp_path / "recipe.yaml"
    result = runner.invoke(app, ["init", "--from", str(folder / config), "-o", str(output)])
    assert result.exit_code == 0, result.output
    text = output.read_text()
    recipe = yaml.safe_load(text)
    for key, value in expected.items():
        node = recipe
        for part in key.split("."):
            node = node[int(part)] if part.isdigit() else node[part]
        assert node == value, key
    for entry in unmapped:
        assert f"not translated: {entry}" in result.output and f"#   {entry}" in text, entry
    validated = runner.invoke(app, ["validate", str(output)])
    assert validated.exit_code == 0, validated.output
    assert runner.invoke(app, ["preview", str(output), "--limit", "1"]).exit_code == 0


def test_llama_factory_datasets_become_sources_with_their_formatting(tmp_path, tiny_smollm, monkeypatch):
    folder = peer_folder(tmp_path, tiny_smollm, monkeypatch)
    output = tmp_path / "recipe.yaml"
    assert runner.invoke(app, ["init", "--from", str(folder / "llama_factory/llama3_lora_sft.yaml"), "-o", str(output)])
    sources = yaml.safe_load(output.read_text())["data"]["sources"]
    assert [(Path(s["path"]).name, s["format"]) for s in sources] == [
        ("identity.json", "alpaca"),
        ("alpaca_en_demo.json", "alpaca"),
        ("glaive_toolcall_en_demo.json", "sharegpt"),
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("learning_rate: 1e-4\n", "neither an Axolotl config"),
        ("model_name_or_path: m\nstage: dpo\n", "stage: dpo: sft init --from translates supervised"),
        ("model_name_or_path: m\ndataset: nowhere\n", "dataset_info.json: not found"),
        ("base_model: [unclosed\n", "not valid YAML"),
    ],
)
def test_what_cannot_be_translated_is_one_error(tmp_path, text, needle):
    config = tmp_path / "peer.yaml"
    config.write_text(text)
    result = runner.invoke(app, ["init", "--from", str(config), "-o", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 2 and needle in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "recipe.yaml").exists()
