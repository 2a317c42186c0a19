"""`sft eval --tasks`: lm-evaluation-harness task YAMLs (local data files beside them) scored on real tiny runs,
LoRA and full, instruction and chat template: the ids the model is fed are the ids `sft generate` builds for the
same text, scores are those of each sequence alone, `--base` scores the untouched base, results are kept in the run
folder and reach its trackers, and a hub task out of reach fails at once."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ALPACA_ROWS, CHAT_ROWS, write_jsonl
from recipes import QUESTIONS, choice_task, recipe_file, write_task
from typer.testing import CliRunner

import sft_cli.runs.generate
from sft_cli.cli.app import app
from sft_cli.recipe.schema import load_recipe
from sft_cli.runs.generate import load_run, prompt_token_ids
from sft_cli.training.run import train

runner = CliRunner()
INSTRUCTIONS = [("Say hi.", "hi"), ("Name a fruit.", "apple"), ("Count to two.", "one two")]
DOCUMENTS = ["The sun rises in the east.", "Water boils at one hundred degrees Celsius at sea level."]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tasks")
    return {
        "choice": choice_task(folder),
        "answer": write_task(
            folder,
            "answer",
            [{"instruction": i, "output": o} for i, o in INSTRUCTIONS],
            output_type="generate_until",
            doc_to_text="{{instruction}}",
            doc_to_target="{{output}}",
            generation_kwargs={"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False},
            metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        ),
        "documents": write_task(
            folder,
            "documents",
            [{"text": d} for d in DOCUMENTS],
            output_type="loglikelihood_rolling",
            doc_to_text="",
            doc_to_target="{{text}}",
            metric_list=[{"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False}],
        ),
    }


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_path) -> Path:
    """An alpaca-template LoRA run that reports to TensorBoard."""
    tmp = tmp_path_factory.mktemp("lora")
    training = {"max_steps": 12, "learning_rate": 1e-2, "report_to": ["tensorboard"]}
    path = recipe_file(tmp, tiny_path, rows=ALPACA_ROWS * 2, template="alpaca", lora={"r": 4}, training=training)
    return train(load_recipe(path)).run_dir


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, tiny_smollm) -> Path:
    """A full fine-tune through the ChatML chat template."""
    tmp = tmp_path_factory.mktemp("chat")
    path = recipe_file(tmp, tiny_smollm, rows=CHAT_ROWS * 4, template="chat", training={"max_steps": 4})
    return train(load_recipe(path)).run_dir


def recording(monkeypatch) -> list[list[int]]:
    """The unpadded id rows of every forward pass with more than one new token (scoring, and generation's first
    step), of every model `sft eval` loads from now on."""
    seen: list[list[int]] = []
    real_load = sft_cli.runs.generate.load_run

    def record(module, args, kwargs):
        ids, mask = kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask")
        if ids.shape[1] > 1:
            for row, keep in zip(ids.tolist(), (mask if mask is not None else torch.ones_like(ids)).tolist()):
                seen.append([token for token, kept in zip(row, keep) if kept])

    def load_and_record(run_dir, base=False):
        run = real_load(run_dir, base=base)
        inner = run.model.get_base_model() if hasattr(run.model, "get_base_model") else run.model
        inner.register_forward_pre_hook(record, with_kwargs=True)
        return run

    monkeypatch.setattr(sft_cli.runs.generate, "load_run", load_and_record)
    return seen


@pytest.mark.parametrize("which, marker", [("lora_run", "### Response:"), ("chat_run", "<|im_start|>assistant")])
def test_the_model_is_fed_the_ids_sft_generate_builds(request, tasks, monkeypatch, which, marker):
    from sft_cli.runs.harness import load_tasks, run_harness

    run_dir = request.getfixturevalue(which)
    seen = recording(monkeypatch)
    result = run_harness(run_dir, load_tasks([str(tasks["choice"]), str(tasks["answer"])]))
    assert {score.task for score in result.scores} == {"choice", "answer"}

    run = load_run(run_dir)

    def generate_ids(text: str) -> list[int]:  # what `sft generate RUN TEXT` feeds the model
        return prompt_token_ids(run, {"instruction": text, "input": ""})

    expected = [generate_ids(text) for text, _ in INSTRUCTIONS]
    for question, choices, _ in QUESTIONS:
        prompt = generate_ids(f"Question: {question}\nAnswer:")
        # a choice is scored after the prompt: the model is fed all but its last token (only a target)
        expected += [(prompt + run.tokenizer.encode(choice, add_special_tokens=False))[:-1] for choice in choices]
    assert sorted(seen) == sorted(expected)
    assert all(marker in run.tokenizer.decode(ids) for ids in expected)  # the run's template, not the bare text


def test_raw_prompts_are_the_task_text_as_it_is(lora_run, tasks, monkeypatch):
    """--prompt raw: no template, the tokenizer's own BOS, the choice joined to its question (lm-eval's way)."""
    from sft_cli.runs.harness import load_tasks, run_harness

    seen = recording(monkeypatch)
    result = run_harness(lora_run, load_tasks([str(tasks["choice"]), str(tasks["answer"])]), prompt="raw")
    assert result.prompt == "raw"
    tokenizer = load_run(lora_run).tokenizer
    scored = [tokenizer.encode(f"Question: {q}\nAnswer: {choice}") for q, choices, _ in QUESTIONS for choice in choices]
    assert sorted(seen) == sorted([tokenizer.encode(text) for text, _ in INSTRUCTIONS] + [ids[:-1] for ids in scored])
    assert all(ids[0] == tokenizer.bos_token_id and "###" not in tokenizer.decode(ids) for ids in seen)
    for text, _ in INSTRUCTIONS:
        assert tokenizer.encode(text) in seen


def test_scores_in_batches_equal_each_sequence_alone(lora_run):
    from sft_cli.runs.harness_model import RunModel

    run = load_run(lora_run)
    model = RunModel(run, batch_size=3)
    pairs = [("Say hi.", " hi"), ("Question: What is 1 plus 2?\nAnswer:", " 3"), ("A much longer context " * 5, "end")]
    scored = model.loglikelihood([SimpleNamespace(args=pair) for pair in pairs])
    for (context, continuation), (logprob, greedy) in zip(pairs, scored):
        prompt = prompt_token_ids(run, {"instruction": context, "input": ""})
        answer = run.tokenizer.encode(continuation.strip(), add_special_tokens=False)
        with torch.no_grad():
            logits = run.model(input_ids=torch.tensor([prompt + answer])).logits.float()
        alone = torch.log_softmax(logits[0, len(prompt) - 1 : -1], -1)
        target = torch.tensor(answer)
        assert logprob == pytest.approx(alone.gather(-1, target[:, None]).sum().item(), abs=1e-4)
        assert greedy == bool((alone.argmax(-1) == target).all())


def test_long_documents_score_as_lm_evals_own_backend_in_windows_the_model_can_take(lora_run, monkeypatch):
    """A document five times the model's length: windows of at most max_length tokens fed, and the same
    log-likelihood as lm-eval's Hugging Face backend gives for the same model and length."""
    from lm_eval.models.huggingface import HFLM

    from sft_cli.runs.harness_model import RunModel

    seen = recording(monkeypatch)
    run = sft_cli.runs.generate.load_run(lora_run, base=True)
    ours = RunModel(run, batch_size=4)
    ours.max_length = 16
    document = SimpleNamespace(args=(" ".join(DOCUMENTS) * 2,))
    assert len(run.tokenizer.encode(document.args[0])) > 5 * 16
    (total,) = ours.loglikelihood_rolling([document])
    assert seen and max(map(len, seen)) <= 16
    # add_bos_token=False: lm-eval's backend otherwise scores the tokenizer's BOS as the document's first token
    theirs = HFLM(pretrained=run.model, tokenizer=run.tokenizer, max_length=16, batch_size=4, add_bos_token=False)
    assert total == pytest.approx(theirs.loglikelihood_rolling([document], disable_tqdm=True)[0], rel=1e-4)


def bits_per_byte(model, tokenizer, documents: list[str]) -> float:
    """A rolling document score by hand: every token after BOS, summed over documents, per UTF-8 byte."""
    total = 0.0
    for text in documents:
        ids = tokenizer.encode(text, add_special_tokens=False)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[tokenizer.bos_token_id] + ids])).logits.float()
        total += torch.log_softmax(logits[0, :-1], -1).gather(-1, torch.tensor(ids)[:, None]).sum().item()
    return -total / math.log(2) / sum(len(text.encode()) for text in documents)


def test_base_is_scored_beside_the_run_kept_in_the_run_folder_and_sent_to_tensorboard(lora_run, tasks, tiny_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM

    args = ["eval", str(lora_run), "--tasks", f"{tasks['documents']},{tasks['choice']}", "--base", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    harness = json.loads(result.stdout.splitlines()[-1])["harness"]
    scores = {(s["task"], s["metric"]): s for s in harness["scores"]}
    assert set(scores) == {("documents", "bits_per_byte"), ("choice", "acc")}

    run = load_run(lora_run)
    untouched = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    bpb = scores[("documents", "bits_per_byte")]
    assert bpb["base"] == pytest.approx(bits_per_byte(untouched, run.tokenizer, DOCUMENTS), rel=1e-4)
    assert bpb["tuned"] == pytest.approx(bits_per_byte(run.model, run.tokenizer, DOCUMENTS), rel=1e-4)
    assert bpb["tuned"] != pytest.approx(bpb["base"], rel=1e-3)
    assert bpb["change"] == pytest.approx(bpb["tuned"] - bpb["base"])

    kept = Path(harness["saved_to"])
    assert kept.parent == lora_run / "eval" and json.loads(kept.read_text())["scores"] == harness["scores"]
    again = runner.invoke(app, ["eval", str(lora_run), "--tasks", str(tasks["choice"]), "--json"])
    assert again.exit_code == 0, again.output
    assert len(list((lora_run / "eval").glob("harness-*.json"))) == 2  # a second evaluation never overwrites

    events = EventAccumulator(str(lora_run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = events.Scalars("harness/documents/bits_per_byte")
    step = json.loads((lora_run / "run.json").read_text())["global_step"]
    assert [(e.step, e.value) for e in logged][:1] == [(step, pytest.approx(bpb["tuned"], rel=1e-5))]
    assert events.Scalars("harness_base/documents/bits_per_byte")[0].value == pytest.approx(bpb["base"], rel=1e-5)
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, step + 1))  # training's kept as it was


def test_a_merged_model_folder_is_scored_as_its_run(lora_run, tasks, tmp_path):
    """`sft merge` writes a folder without the run's recipe and trackers: its scores equal the LoRA run's."""
    merged = tmp_path / "merged"
    assert runner.invoke(app, ["merge", str(lora_run), "-o", str(merged)]).exit_code == 0
    scores = {}
    for folder in (lora_run, merged):
        result = runner.invoke(app, ["eval", str(folder), "--tasks", str(tasks["documents"]), "--json"])
        assert result.exit_code == 0, result.output
        (scores[folder],) = [s["tuned"] for s in json.loads(result.stdout)["harness"]["scores"]]
    assert scores[merged] == pytest.approx(scores[lora_run], rel=1e-4)
    assert len(list((merged / "eval").glob("harness-*.json"))) == 1


def test_a_hub_task_out_of_reach_fails_at_once_naming_it(lora_run, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}  # nothing answers
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sft_cli", "eval", str(lora_run), "--tasks", "gsm8k"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "gsm8k: cannot be loaded" in done.stderr and "Traceback" not in done.stderr
    assert "out of reach" in done.stderr
    assert time.monotonic() - start < 45  # imports and lm-eval's task index; never the hub client's retries


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "gsm8kk"], "'gsm8kk' is not an lm-eval task, group or tag"),
        (["--tasks", "missing/task.yaml"], "task file not found: missing/task.yaml"),
        ([], "give --data (your rows) or --tasks"),
    ],
)
def test_bad_task_arguments_are_one_error(lora_run, args, message):
    result = runner.invoke(app, ["eval", str(lora_run), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    if "gsm8kk" in args:
        assert "did you mean gsm8k" in result.output


def test_tasks_lm_eval_would_score_wrongly_or_refuse_late_are_refused_first(lora_run, tmp_path):
    """Each is one error (exit 2, no traceback) before any model loads or any row is answered: the same task name
    twice (lm-eval would score it once), a task running generated code, more few-shot examples than rows."""
    folders = [tmp_path / name for name in ("a", "b", "unsafe", "few")]
    for folder in folders:
        folder.mkdir()
    rows = write_jsonl(tmp_path / "rows.jsonl", ALPACA_ROWS)
    unsafe = choice_task(folders[2], unsafe_code=True)
    cases = [
        (["--tasks", f"{choice_task(folders[0])},{choice_task(folders[1])}"], "choice given more than once"),
        (["--tasks", str(unsafe), "--data", str(rows)], "runs the code the model writes"),
        (["--tasks", str(choice_task(folders[3])), "--num-fewshot", "5"], "lm-eval cannot run these tasks so"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["eval", str(lora_run), *args])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert "answer loss" not in result.output  # the --data rows were not evaluated first


def test_a_task_whose_data_file_is_missing_names_the_task_and_the_file(lora_run, tmp_path):
    task = choice_task(tmp_path)
    (tmp_path / "choice.jsonl").unlink()
    kept_before = sorted((lora_run / "eval").glob("*")) if (lora_run / "eval").exists() else []
    result = runner.invoke(app, ["eval", str(lora_run), "--tasks", str(task)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{task}: cannot be loaded" in result.output and "choice.jsonl" in result.output
    assert (sorted((lora_run / "eval").glob("*")) if (lora_run / "eval").exists() else []) == kept_before


def test_without_the_extra_the_error_names_it(lora_run, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    result = runner.invoke(app, ["eval", str(lora_run), "--tasks", "gsm8k"])
    assert result.exit_code == 2
    assert "pip install 'sft-cli[eval]'" in result.output
