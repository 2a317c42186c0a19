"""`sft export`: tiny-model runs exported to an HF folder and to GGUF, checked through each runtime's own prompt
path (transformers' apply_chat_template; llama.cpp's tokenizer and the GGUF's chat template through
llama-cpp-python): the prompt ids sft trains with, the greedy answer `sft generate` gives, the trained stops."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ALPACA_ROWS, CHAT_ROWS, write_jsonl
from families import FAMILIES, build_family_tokenizer
from recipes import recipe_file
from typer.testing import CliRunner

from sft_cli.cli.app import app
from sft_cli.data.rows import load_rows
from sft_cli.recipe.schema import load_recipe
from sft_cli.runs.generate import load_run, prompt_token_ids
from sft_cli.training.run import train

runner = CliRunner()
MEMORISE = {"max_steps": 60, "learning_rate": 1e-2, "batch_size": 4}
ROWS = ALPACA_ROWS * 2


def trained(tmp: Path, model: Path, rows, **fields) -> Path:
    eval_rows = write_jsonl(tmp / "eval.jsonl", rows)
    fields["training"] = {**MEMORISE, **fields.get("training", {})}
    fields.setdefault("max_length", 256)
    path = recipe_file(tmp, model, rows=rows, data={"eval_path": eval_rows.name}, **fields)
    return train(load_recipe(path)).run_dir


@pytest.fixture(scope="module")
def alpaca_run(tmp_path_factory, tiny_smollm):
    return trained(tmp_path_factory.mktemp("alpaca"), tiny_smollm, ROWS)


@pytest.fixture(scope="module")
def custom_lora_run(tmp_path_factory, alpaca_run):
    """LoRA on the alpaca run's model (a random model's near-uniform outputs give LoRA almost no gradient)."""
    custom = {"prompt": "Task: {instruction}\nGiven: {input}\nAnswer: ", "response": "{output}"}
    lora = {"r": 16, "alpha": 32}
    return trained(tmp_path_factory.mktemp("custom"), alpaca_run, ROWS, template=custom, lora=lora)


@pytest.fixture(scope="module")
def chatml_run(tmp_path_factory, tiny_smollm):
    return trained(tmp_path_factory.mktemp("chatml"), tiny_smollm, CHAT_ROWS * 2, template="chat")


@pytest.fixture(scope="module")
def llama3_run(tmp_path_factory, tiny_smollm):
    """Llama 3's template, tokens and stops, with EOS `<|end_of_text|>` and the end of turn `<|eot_id|>`."""
    tmp = tmp_path_factory.mktemp("llama3")
    model = tmp / "model"
    shutil.copytree(tiny_smollm, model)
    family = dataclasses.replace(FAMILIES["llama3.1"], eos="<|end_of_text|>")
    build_family_tokenizer(family, tiny_smollm, model)
    return trained(tmp, model, CHAT_ROWS * 2, template="chat", max_length=512)


def export(run_dir: Path, fmt: str, *args: str):
    result = runner.invoke(app, ["export", str(run_dir), "--format", fmt, "--json", *args])
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result, report


def assert_verified(result, report, identical: bool = True):
    assert result.exit_code == 0, result.output
    check = report["check"]
    assert check["passed"] and check["rows"] >= 2
    assert check["prompt_ids_equal"] == check["rows"] and check["stops_ok"] == check["rows"]
    assert not check["stops_missing"]
    if identical:
        assert check["identical_generations"] == check["rows"], check["per_row"]
    assert any(r["sft_stopped"] and r["export_stopped"] for r in check["per_row"])  # it learned to stop, and stops


@pytest.mark.parametrize("run_name", ["alpaca_run", "custom_lora_run", "chatml_run", "llama3_run"])
def test_hf_export_answers_as_sft_generate_does(request, run_name):
    run_dir = request.getfixturevalue(run_name)
    result, report = export(run_dir, "hf")
    assert_verified(result, report)
    folder = Path(report["folder"])
    assert {"config.json", "model.safetensors", "generation_config.json", "export.json"} <= set(report["files"])
    assert not (folder / "adapter_config.json").exists()  # LoRA merged: a plain model folder
    assert sorted(report["stop_tokens"]) == sorted(load_run(run_dir).options.stop_tokens)
    # the folder works without sft: the tokenizer's own chat template gives sft's prompt
    from transformers import AutoTokenizer

    from sft_cli.export.check import export_messages

    tokenizer = AutoTokenizer.from_pretrained(folder)
    run = load_run(run_dir)
    row = load_rows(load_recipe(run_dir / "recipe.yaml", check_files=False).recipe, "eval").rows[0]
    messages, _ = export_messages(run, row.fields)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert list(ids) == prompt_token_ids(run, row.fields)


def test_the_check_can_run_on_held_out_rows_from_a_file(alpaca_run, tmp_path):
    """--check-data: the rows checked are the file's (rows the run never saw), not the run's own eval rows."""
    held_out = [
        {"instruction": "Spell the number as a word, then count its letters.", "input": "seven", "output": "5"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Say it louder, please, in capital letters only.", "input": "quiet words", "output": "QUIET"},
    ]
    path = write_jsonl(tmp_path / "held_out.jsonl", held_out)
    result, report = export(alpaca_run, "hf", "--check-data", str(path), "--output", str(tmp_path / "hf"))
    assert result.exit_code == 0, result.output
    assert report["check_data"] == str(path) and report["check"]["rows"] == len(held_out)
    run = load_run(alpaca_run)
    expected = [len(prompt_token_ids(run, row)) for row in held_out]
    assert [r["prompt_tokens"] for r in report["check"]["per_row"]] == expected
    assert report["check"]["prompt_ids_equal"] == len(held_out)

    missing = tmp_path / "missing.jsonl"
    target = tmp_path / "not-written"
    result = runner.invoke(
        app, ["export", str(alpaca_run), "-f", "hf", "--check-data", str(missing), "-o", str(target)]
    )
    assert result.exit_code == 2 and "missing.jsonl" in result.output and not target.exists()


def test_alpaca_prompt_format_travels_as_the_chat_template(alpaca_run, tmp_path):
    result, report = export(alpaca_run, "hf", "--no-check", "--output", str(tmp_path / "hf"))
    assert result.exit_code == 0, result.output
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(report["folder"])
    user = {"role": "user", "content": "Translate to French.", "input": "Good morning!"}
    text = tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    assert text == "### Instruction:\nTranslate to French.\n### Input:\nGood morning!\n### Response:\n"
    plain = tokenizer.apply_chat_template([{"role": "user", "content": "Hi."}], tokenize=False)
    assert plain == "### Instruction:\nHi.\n### Response:\n"
    with pytest.raises(Exception, match="no system message"):
        tokenizer.apply_chat_template([{"role": "system", "content": "x"}, user], tokenize=False)
    config = json.loads((Path(report["folder"]) / "generation_config.json").read_text())
    assert config["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert report["check"] is None


@pytest.mark.parametrize("run_name", ["alpaca_run", "custom_lora_run", "chatml_run", "llama3_run"])
def test_gguf_f32_export_answers_as_sft_generate_does_through_llama_cpp(request, run_name):
    result, report = export(request.getfixturevalue(run_name), "gguf", "--dtype", "f32")
    assert_verified(result, report)
    assert report["check"]["runtime"] == "llama.cpp" and report["dtype"] == "f32"
    assert any(name.endswith("-f32.gguf") for name in report["files"])


def test_llama3_stops_at_end_of_turn_in_every_export(llama3_run):
    """EOS is <|end_of_text|>, turns end with <|eot_id|>: both exports must stop at <|eot_id|>."""
    run = load_run(llama3_run)
    assert run.tokenizer.eos_token == "<|end_of_text|>" and "<|eot_id|>" in run.options.stop_tokens
    _, hf = export(llama3_run, "hf", "--no-check", "--output", str(llama3_run.parent / "hf-stops"))
    config = json.loads((Path(hf["folder"]) / "generation_config.json").read_text())
    assert run.tokenizer.convert_tokens_to_ids("<|eot_id|>") in config["eos_token_id"]
    _, gguf = export(llama3_run, "gguf", "--dtype", "f32", "--output", str(llama3_run.parent / "gguf-stops"))
    stopped = [r["export_ids"][-1] for r in gguf["check"]["per_row"] if r["export_stopped"]]
    assert stopped and set(stopped) == {run.tokenizer.convert_tokens_to_ids("<|eot_id|>")}


def test_q8_0_gguf_and_ollama_modelfile(alpaca_run):
    result, report = export(alpaca_run, "ollama", "--dtype", "q8_0")
    assert_verified(result, report, identical=False)  # 8-bit weights: answers may diverge; prompts and stops may not
    folder = Path(report["folder"])
    gguf = next(folder.glob("*-q8_0.gguf"))
    from gguf import GGUFReader

    types = {t.tensor_type.name for t in GGUFReader(gguf).tensors}
    assert "Q8_0" in types
    modelfile = (folder / "Modelfile").read_text()
    assert f"FROM ./{gguf.name}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'TEMPLATE """{{- range .Messages }}{{ if eq .Role "user" }}{{ "### Instruction:\\n" }}' in modelfile


@pytest.mark.parametrize(
    ("template", "shown"),
    [
        ("{{ messages[0]['content'] }}", "differ at token 0"),
        ("{{ raise_exception('no chats here') }}", "no chats here"),
    ],
)
def test_a_failed_check_keeps_the_files_as_unverified(alpaca_run, monkeypatch, tmp_path, template, shown):
    """A template that drops the prompt format, or refuses the chat: the check fails, and says where."""
    from sft_cli.export import hf

    monkeypatch.setattr(hf, "exported_chat_template", lambda run: template)
    target = tmp_path / "broken"
    result = runner.invoke(
        app,
        ["export", str(alpaca_run), "--format", "hf", "--output", str(target), "--check", "2"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 1, result.output
    assert "CHECK FAILED" in result.output and shown in result.output
    assert not target.exists() and (tmp_path / "broken.unverified" / "export.json").exists()


def test_merge_writes_the_hf_contract(custom_lora_run, tmp_path):
    result = runner.invoke(app, ["merge", str(custom_lora_run), "--output", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    message = {"role": "user", "content": "Add the numbers.", "input": "12 and 30"}
    text = tokenizer.apply_chat_template([message], add_generation_prompt=True, tokenize=False)
    assert text == "Task: Add the numbers.\nGiven: 12 and 30\nAnswer: "


def test_a_qlora_adapter_is_said_to_be_merged_into_the_full_precision_base(custom_lora_run, tmp_path):
    """QLoRA trains the adapter over a 4-bit base; merge and export apply it to the base in full precision, and
    say so (the record keeps that the base was quantized)."""
    from types import SimpleNamespace

    from sft_cli.recipe.schema import Recipe
    from sft_cli.runs.record import read_record, write_record
    from sft_cli.training.run import run_record

    qlora = Recipe.model_validate({"model": {"name": "m"}, "data": {"path": "x.jsonl"}, "lora": {"load_in_4bit": True}})
    assert run_record(qlora, SimpleNamespace(options=SimpleNamespace(stop_tokens=("</s>",)))).quantized_base == "nf4"
    run = tmp_path / "qlora-run"
    shutil.copytree(custom_lora_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    write_record(run, dataclasses.replace(read_record(run), quantized_base="nf4"))
    merged = runner.invoke(app, ["merge", str(run), "-o", str(tmp_path / "merged")])
    assert merged.exit_code == 0 and "trained over a 4-bit (nf4) base" in merged.output, merged.output
    assert read_record(tmp_path / "merged").quantized_base == "nf4"
    exported = runner.invoke(app, ["export", str(run), "--format", "hf", "-o", str(tmp_path / "hf"), "--no-check"])
    assert exported.exit_code == 0 and "trained over a 4-bit (nf4) base" in exported.output, exported.output
    assert json.loads((tmp_path / "hf" / "export.json").read_text())["quantized_base"] == "nf4"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "hf", "--dtype", "q8_0"], "--format hf writes f32, f16, bf16"),
        (["--format", "gguf", "--dtype", "q4_k"], "--format gguf writes f32, f16, bf16, q8_0"),
        (["--format", "onnx"], "--format onnx: choose hf | gguf | ollama"),
    ],
)
def test_bad_options_are_clear_errors(alpaca_run, tmp_path, args, message):
    result = runner.invoke(app, ["export", str(alpaca_run), *args, "--output", str(tmp_path / "out"), "--no-check"])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("module", ["sentencepiece", "google.protobuf"])
def test_gguf_export_without_the_export_extra_names_the_install_before_any_work(
    alpaca_run, tmp_path, monkeypatch, module
):
    """llama.cpp's converter imports sentencepiece and protobuf: without them, the export stops at once with the
    install command instead of a ModuleNotFoundError after the merge was written."""
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    for fmt in ("gguf", "ollama"):
        out = tmp_path / fmt
        result = runner.invoke(app, ["export", str(alpaca_run), "--format", fmt, "-o", str(out), "--no-check"])
        assert result.exit_code == 2 and "llama.cpp's converter imports it" in result.output, result.output
        assert "pip install 'sft-cli[export]'" in result.output and "Traceback" not in result.output
        assert not list(tmp_path.iterdir())


def test_an_incomplete_run_or_an_existing_output_is_refused(alpaca_run, tmp_path):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    shutil.copy(alpaca_run / "sft_template.json", incomplete)
    result = runner.invoke(app, ["export", str(incomplete), "--format", "hf"])
    assert result.exit_code == 2 and "no final model" in result.output and "--resume" in result.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "export.json").write_text("{}")  # an earlier export
    result = runner.invoke(app, ["export", str(alpaca_run), "--format", "hf", "--output", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "already holds an earlier export" in result.output
    assert "--overwrite" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "nothing"), "--format", "hf"])
    assert result.exit_code == 2 and "not an sft run folder" in result.output


def test_an_architecture_llama_cpp_cannot_convert_is_named(tiny_smollm, tmp_path):
    """OPT loads in transformers (so --format hf works) but llama.cpp has no converter for it."""
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    from sft_cli.recipe.schema import EncodingSpec
    from sft_cli.recipe.sections import ModelSection
    from sft_cli.runs.record import RunRecord, write_record

    run = tmp_path / "opt-run"
    tokenizer = AutoTokenizer.from_pretrained(tiny_smollm)
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=16, ffn_dim=32, num_hidden_layers=1,
                       num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=64)  # fmt: skip
    OPTForCausalLM(config).save_pretrained(run)
    tokenizer.save_pretrained(run)
    write_record(run, RunRecord(EncodingSpec(), ("<|im_end|>",), ModelSection(name=str(run))))
    result = runner.invoke(app, ["export", str(run), "--format", "gguf", "--no-check"])
    assert result.exit_code == 2, result.output
    assert "cannot convert this model: Model OPTForCausalLM is not supported" in result.output
    assert "--format hf works" in result.output and not list(tmp_path.glob("opt-run-gguf-f16.partial*"))
    assert runner.invoke(app, ["export", str(run), "--format", "hf", "--no-check"]).exit_code == 0


def test_a_run_whose_data_is_gone_cannot_be_checked(alpaca_run, tmp_path):
    run = tmp_path / "moved"
    shutil.copytree(alpaca_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    recipe = (run / "recipe.yaml").read_text().replace(str(alpaca_run.parent), str(tmp_path / "gone"))
    (run / "recipe.yaml").write_text(recipe)
    result = runner.invoke(app, ["export", str(run), "--format", "hf"])
    assert result.exit_code == 2 and "the check reads the run's data" in result.output
    assert "--no-check" in result.output and not (tmp_path / "moved-hf").exists()


def test_a_stop_token_llama_cpp_does_not_know_is_written_into_the_gguf(tiny_smollm, tmp_path):
    """A model whose generation config stops at an added token llama.cpp has no rule for: the export writes it as
    the file's end-of-turn token, so llama.cpp stops there too (without it the check fails, naming the token)."""
    from transformers import AutoTokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_smollm, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.add_tokens(["<|custom_end|>"], special_tokens=True)
    tokenizer.save_pretrained(model)
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|custom_end|>")]
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": stops}))
    run_dir = trained(tmp_path, model, CHAT_ROWS, template="chat", training={"max_steps": 2})
    assert "<|custom_end|>" in load_run(run_dir).options.stop_tokens
    result, report = export(run_dir, "gguf", "--dtype", "f32", "--check", "2", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    assert report["stop_tokens_written"] == ["<|custom_end|>"]
    assert report["check"]["passed"] and not report["check"]["stops_missing"]
