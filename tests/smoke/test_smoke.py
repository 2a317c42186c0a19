"""`sft smoke`: the bundled recipes pass every stage on a tiny model of their own architecture; a broken recipe fails
at the right stage with the right message; the JUnit file lists the stages; the tiny model keeps what shapes
behaviour (class, vocabulary, special tokens, chat template, attention kind, tied embeddings)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from conftest import ALPACA_ROWS, CHAT_ROWS, ROOT, write_jsonl
from typer.testing import CliRunner

from sft_cli.cli.app import app
from sft_cli.recipe.sections import ModelSection
from sft_cli.smoke.pipeline import STAGES

runner = CliRunner()


@pytest.fixture(autouse=True)
def smoke_cache(tmp_path_factory, monkeypatch):
    """Tiny models go to this test session's cache (shared by its tests), not the user's."""
    folder = tmp_path_factory.getbasetemp() / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder


def smoke(*args: str):
    result = runner.invoke(app, ["smoke", *args, "--json"])
    return result, json.loads(result.stdout) if result.stdout.strip().startswith("{") else None


def stages(report: dict, recipe: int = 0) -> dict[str, dict]:
    return {s["name"]: s for s in report["results"][recipe]["stages"]}


def test_bundled_recipes_pass_every_stage_and_the_junit_file_lists_them(tmp_path):
    recipes = [str(ROOT / "configs" / name) for name in ("alpaca.yaml", "special_tokens.yaml", "chat.yaml")]
    result, report = smoke(*recipes, "--junit", str(tmp_path / "smoke.xml"))
    assert result.exit_code == 0, result.output
    for i in range(3):
        assert all(s["status"] == "passed" for s in report["results"][i]["stages"]), report["results"][i]
    assert "steps, loss" in stages(report)["train"]["message"]
    suites = ElementTree.parse(tmp_path / "smoke.xml").getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == recipes
    assert [c.get("name") for c in suites[0].findall("testcase")] == list(STAGES)
    assert all(s.get("failures") == "0" for s in suites)


def test_gpu_settings_are_reported_as_skipped_with_the_reason():
    recipe = str(ROOT / "configs" / "special_tokens.yaml")
    result, report = smoke(recipe, "--set", "training.precision=bf16", "--set", "lora.load_in_4bit=true")
    assert result.exit_code == 0, result.output
    gpu = stages(report)["gpu settings"]
    assert gpu["status"] == "skipped" and "bf16 runs as fp32" in gpu["message"] and "QLoRA" in gpu["message"]


def recipe_with(tmp_path: Path, rows=ALPACA_ROWS * 4, **fields) -> str:
    write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = {"model": {"name": str(ROOT / "fixtures" / "smollm2-135m")}, "data": {"path": "train.jsonl"}, **fields}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return str(tmp_path / "recipe.yaml")


@pytest.mark.parametrize(
    ("fields", "rows", "stage", "message"),
    [
        ({"lora": {"target_modules": ["q_proj", "nope_proj"]}}, None, "train",
         "lora.target_modules: nope_proj not in LlamaForCausalLM; its linear modules: down_proj, gate_proj, k_proj"),
        ({"max_length": 8}, None, "preview", "no example left: 16 of 16 rows dropped"),
        ({}, [*ALPACA_ROWS, {"instruction": "x", "output": 5}], "preview",
         "train.jsonl row 5: field 'output' must be text"),
    ],
)  # fmt: skip
def test_a_broken_recipe_fails_at_the_right_stage(tmp_path, fields, rows, stage, message):
    result, report = smoke(recipe_with(tmp_path, rows or ALPACA_ROWS * 4, **fields))
    assert result.exit_code == 2, result.output
    assert f"error: {tmp_path / 'recipe.yaml'}: {stage}: " in result.output and "Traceback" not in result.output
    found = stages(report)
    assert found[stage]["status"] == "failed" and message in found[stage]["message"], found[stage]
    after = list(STAGES)[list(STAGES).index(stage) + 1 :]
    assert all(found[name]["status"] == "skipped" for name in after)
    assert report["results"][0]["folder"] and Path(report["results"][0]["folder"]).is_dir()


def test_an_unreadable_model_and_an_unbuildable_architecture_are_named(tmp_path, tiny_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # offline
    started = time.perf_counter()
    _, report = smoke(recipe_with(tmp_path, model={"name": "no-org/no-model"}))
    assert time.perf_counter() - started < 5
    assert "cannot read the config and tokenizer of no-org/no-model" in stages(report)["tiny model"]["message"]
    from transformers import T5Config

    t5 = tmp_path / "t5"
    shutil.copytree(tiny_path, t5)
    T5Config(vocab_size=1024, d_model=16, num_layers=1, architectures=["T5ForConditionalGeneration"]).save_pretrained(
        t5
    )
    _, report = smoke(recipe_with(tmp_path, model={"name": str(t5)}))
    assert "transformers cannot build T5ForConditionalGeneration" in stages(report)["tiny model"]["message"]


def family_source(tmp_path: Path, tiny_path: Path, name: str) -> Path:
    """A model folder with a family's config (its architecture's defaults) over the tiny fixture's tokenizer."""
    from transformers import AutoTokenizer, Gemma2Config, MistralConfig, Qwen2Config

    folder = tmp_path / name
    folder.mkdir()
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    tokenizer.save_pretrained(folder)
    config = {"qwen2": Qwen2Config, "gemma2": Gemma2Config, "mistral": MistralConfig}[name](vocab_size=len(tokenizer))
    config.architectures = [{"qwen2": "Qwen2", "gemma2": "Gemma2", "mistral": "Mistral"}[name] + "ForCausalLM"]
    config.save_pretrained(folder)
    return folder


KEPT_CONFIG = ("architectures", "vocab_size", "tie_word_embeddings", "sliding_window", "attn_logit_softcapping",
               "final_logit_softcapping", "model_type")  # fmt: skip


@pytest.mark.parametrize("source", ["smollm2", "tiny", "qwen2", "gemma2", "mistral"])
def test_the_tiny_model_keeps_the_architecture_vocabulary_special_tokens_and_template(tmp_path, tiny_path, source):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from sft_cli.smoke.model import tiny_model

    folder = {"smollm2": ROOT / "fixtures" / "smollm2-135m", "tiny": tiny_path}.get(source)
    folder = folder or family_source(tmp_path, tiny_path, source)
    built, _ = tiny_model(ModelSection(name=str(folder)))  # built now, or by an earlier test of this session
    assert tiny_model(ModelSection(name=str(folder))) == (built, True)
    original, small = AutoConfig.from_pretrained(folder), AutoConfig.from_pretrained(built)
    for key in KEPT_CONFIG:
        assert getattr(small, key, None) == getattr(original, key, None), key
    if getattr(original, "layer_types", None):
        assert set(small.layer_types) == set(original.layer_types)  # sliding and full attention both present
    assert small.num_hidden_layers == 2 and small.hidden_size == 64
    a, b = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(built)
    assert a.get_vocab() == b.get_vocab() and a.all_special_tokens == b.all_special_tokens
    assert a.chat_template == b.chat_template
    model = AutoModelForCausalLM.from_pretrained(built)
    assert type(model).__name__ == original.architectures[0]
    assert model.get_input_embeddings().weight.shape[0] == original.vocab_size


def test_the_tiny_model_reads_stop_tokens_from_the_files_training_reads(tmp_path, tiny_path):
    """A model folder without generation_config.json whose config.json eos is not the chat template's end of turn
    (Phi-3.5's `<|end|>`): training takes the end of turn from the template, and so must the tiny model."""
    from families import FAMILIES, build_family_tokenizer
    from transformers import AutoConfig, AutoTokenizer

    folder = build_family_tokenizer(FAMILIES["phi3.5"], tiny_path, tmp_path / "phi")
    (folder / "generation_config.json").unlink()
    config = AutoConfig.from_pretrained(tiny_path)
    config.vocab_size = len(AutoTokenizer.from_pretrained(folder))
    config.eos_token_id = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<|endoftext|>")
    config.save_pretrained(folder)
    recipe = recipe_with(tmp_path, CHAT_ROWS * 4, model={"name": str(folder)}, template="chat")
    preview = runner.invoke(app, ["preview", recipe])
    assert preview.exit_code == 0 and "end_token_missing" not in preview.output, preview.output
    result, report = smoke(recipe)
    assert result.exit_code == 0 and stages(report)["preview"]["status"] == "passed", stages(report)["preview"]
