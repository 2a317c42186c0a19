"""Plain text for continued pre-training (`format: text`): every token trained with the tokenizer's EOS after each
document, a document longer than max_length split into consecutive windows (never dropped), packing on by default,
and `.txt` files read as one document each."""

from __future__ import annotations

import json

import yaml
from conftest import write_jsonl
from transformers import AutoTokenizer
from typer.testing import CliRunner

from sft_cli.cli.app import app
from sft_cli.encoding.encode import IGNORE

runner = CliRunner()
SHORT = ["The river runs north.", "Bread rises in a warm room.", "Owls hunt at night."]
LONG = " ".join(f"Sentence {i} of a long field report on the northern river basin." for i in range(40))


def text_recipe(tmp_path, model, path: str, **fields) -> str:
    recipe = {
        "model": {"name": str(model)},
        "data": {"path": path, "format": "text"},
        "max_length": 64,
        "training": {"max_steps": 3, "batch_size": 2, "logging_steps": 1},
        "output": {"dir": "run"},
        **fields,
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return str(tmp_path / "recipe.yaml")


def test_documents_train_every_token_and_a_long_one_becomes_windows(tmp_path, tiny_path):
    write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in [*SHORT, LONG]])
    recipe = text_recipe(tmp_path, tiny_path, "docs.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    preview = runner.invoke(app, ["preview", recipe, "--json", "--limit", "100"])
    assert preview.exit_code == 0, preview.output
    document = json.loads(preview.stdout)
    examples = document["examples"]
    long_ids = tokenizer(LONG + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    windows = [e for e in examples if e["index"] == 4]
    assert len(windows) == -(-(len(long_ids) + 1) // 64) > 1  # BOS + the document + EOS, in windows of 64
    assert all(len(w["input_ids"]) <= 64 for w in windows)
    assert sum((w["input_ids"] for w in windows), [])[-len(long_ids) :] == long_ids  # consecutive, nothing lost
    for example in examples:  # every token trained, EOS closing each document
        assert example["labels"][1:] == example["input_ids"][1:] and IGNORE not in example["labels"][1:]
    assert [e["input_ids"][-1] for e in examples if e["index"] <= 3] == [tokenizer.eos_token_id] * 3
    stats = document["stats"]
    assert (stats["dropped"], stats["split_documents"], stats["windows"]) == (0, 1, len(windows))
    shown = runner.invoke(app, ["preview", recipe])
    assert f"1 -> {len(windows)}" in shown.output
    result = runner.invoke(app, ["train", recipe])
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "run" / "run.json").read_text())["plan"]
    assert plan["batching"]["layout"] == "packed"  # packing on by default for plain text


def test_a_folder_of_txt_files_is_one_document_per_file(tmp_path, tiny_path):
    (tmp_path / "corpus").mkdir()
    for i, text in enumerate(SHORT):
        (tmp_path / "corpus" / f"{i}.txt").write_text(text + "\n\nA second paragraph.\n")
    recipe = text_recipe(tmp_path, tiny_path, "corpus")
    preview = runner.invoke(app, ["preview", recipe, "--json"])
    assert preview.exit_code == 0, preview.output
    examples = json.loads(preview.stdout)["examples"]
    assert [e["index"] for e in examples] == [1, 2, 3] and "A second paragraph." in examples[0]["text"]
    (tmp_path / "corpus" / "3.txt").write_bytes(b"caf\xe9")
    broken = runner.invoke(app, ["preview", recipe])
    assert broken.exit_code == 2 and "3.txt: not UTF-8 text" in " ".join(broken.output.split())
