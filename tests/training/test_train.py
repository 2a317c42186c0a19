"""Training for real on the tiny model: loss falls, masking reaches the loss, early stopping, LoRA, resume,
two processes, and bad recipes failing before any model loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ALPACA_ROWS, ROOT, write_jsonl
from recipes import metrics, recipe_file
from safetensors.torch import load_file
from typer.testing import CliRunner

from sft_cli.cli.app import app
from sft_cli.encoding.encode import IGNORE
from sft_cli.recipe.schema import load_recipe
from sft_cli.training.run import setup_session, train

runner = CliRunner()


def test_loss_falls_and_the_run_folder_is_complete(tmp_path, tiny_path):
    result = train(load_recipe(recipe_file(tmp_path, tiny_path, training={"max_steps": 20})))
    run_dir = result.run_dir
    losses = [m["loss"] for m in metrics(run_dir) if "loss" in m]
    assert result.stop_reason == "completed" and len(losses) == 20
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "sft_template.json",
        "recipe.yaml",
        "loss.png",
        "run.json",
        "metrics.jsonl",
    ):
        assert (run_dir / name).exists(), name
    record = json.loads((run_dir / "run.json").read_text())
    env = record["plan"]["environment"]
    assert env["precision"] == "fp32" and env["device"] == "cpu" and env["trained_weights"] == "fp32"
    batching = record["plan"]["batching"]
    assert batching["layout"] == "padding_free" and batching["padding_share"] == 0 and batching["tokens_per_step"] > 0
    assert env["attention"] == "sft_varlen"
    assert json.loads((run_dir / "config.json").read_text()).get("_attn_implementation") != "sft_varlen"
    assert record["tokens_per_s"] > 0 and record["global_step"] == 20 and record["versions"]["trl"]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run_dir).config.vocab_size > 0
    assert not list(run_dir.glob(".final.partial*"))


@pytest.mark.parametrize("loss", ["masked", "unmasked"])
def test_trainer_batches_carry_preview_labels_and_loss_covers_exactly_them(tmp_path, tiny_path, loss):
    path = recipe_file(tmp_path, tiny_path, rows=ALPACA_ROWS, loss=loss)
    preview = runner.invoke(app, ["preview", str(path), "--json", "--limit", "10"])
    expected = {e["index"]: e["labels"] for e in json.loads(preview.stdout)["examples"]}
    session = setup_session(load_recipe(path))
    trainer = session.trainer
    batch = next(iter(trainer.get_train_dataloader()))  # padding-free: one row, sequences one after the other
    bounds = batch["cu_seq_lens_q"].tolist()
    labels, ids = batch["labels"][0].tolist(), batch["input_ids"][0].tolist()
    for row, start, end in zip(session.collator.first_rows, bounds, bounds[1:]):
        # the very labels preview printed; the first is never trained (nothing before it predicts it)
        assert labels[start + 1 : end] == expected[row][1:] and labels[start] == IGNORE
        if loss == "unmasked":
            assert labels[start + 1 : end] == ids[start + 1 : end]
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        reported = trainer.compute_loss(model, dict(batch))
    shifted = batch["labels"][:, 1:]
    token_losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1), reduction="none"
    )
    trained = shifted.reshape(-1) != IGNORE
    independent = token_losses[trained].mean()
    assert torch.allclose(reported, independent, atol=1e-5)
    if loss == "masked":  # answer tokens only: fewer than all real tokens
        assert trained.sum() < len(ids) - len(bounds)


def test_early_stopping_stops_when_eval_loss_rises(tmp_path, tiny_path):
    conflicting = [{**r, "output": r["output"][::-1] + " no"} for r in ALPACA_ROWS]
    write_jsonl(tmp_path / "eval.jsonl", conflicting)
    path = recipe_file(
        tmp_path,
        tiny_path,
        data={"eval_path": "eval.jsonl"},
        training={
            "max_steps": 60,
            "eval_steps": 2,
            "save_steps": 2,
            "learning_rate": 1e-2,
            "early_stopping": {"patience": 2},
        },
    )
    result = train(load_recipe(path))
    evals = [m["eval_loss"] for m in metrics(result.run_dir) if "eval_loss" in m]
    assert (
        result.stop_reason == "early_stopping"
        and json.loads((result.run_dir / "run.json").read_text())["global_step"] < 60
    )
    assert min(evals) < evals[-1], evals


def test_lora_adapter_saves_reloads_and_trains_new_token_rows(tmp_path, tiny_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = recipe_file(
        tmp_path,
        tiny_path,
        template="special_tokens",
        loss="unmasked",
        lora={"r": 4, "alpha": 8},
        training={"learning_rate": 1e-2},
    )
    result = train(load_recipe(path))
    run_dir = result.run_dir
    assert (run_dir / "adapter_config.json").exists() and not (run_dir / "model.safetensors").exists()
    assert result.plan.trainable_parameters < result.plan.total_parameters / 5
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    response_id = tokenizer.convert_tokens_to_ids("<|response|>")
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    base.resize_token_embeddings(len(tokenizer))
    initial_row = base.get_input_embeddings().weight[response_id].clone()
    tuned = PeftModel.from_pretrained(base, run_dir)
    merged = tuned.merge_and_unload()
    assert not torch.allclose(merged.get_input_embeddings().weight[response_id], initial_row)
    ids = tokenizer("<|instruction|> hi <|response|>", return_tensors="pt")
    plain = AutoModelForCausalLM.from_pretrained(tiny_path)
    plain.resize_token_embeddings(len(tokenizer))
    assert not torch.allclose(merged(**ids).logits, plain(**ids).logits)


def test_interrupt_then_resume_equals_uninterrupted(tmp_path, tiny_path):
    straight = train(load_recipe(recipe_file(tmp_path / "a", tiny_path)))
    path = recipe_file(tmp_path / "b", tiny_path)
    interrupted = train(load_recipe(path), stop_at_step=6)
    assert interrupted.stop_reason == "interrupted" and "--resume" in interrupted.resume_command
    assert not (interrupted.run_dir / "model.safetensors").exists()
    resumed = train(load_recipe(path), resume=True)
    assert resumed.plan.resume_from.endswith("checkpoint-6") and resumed.stop_reason == "completed"
    a = load_file(straight.run_dir / "model.safetensors")
    b = load_file(resumed.run_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_existing_run_is_never_overwritten_silently(tmp_path, tiny_path):
    path = recipe_file(tmp_path, tiny_path, training={"max_steps": 2})
    assert runner.invoke(app, ["train", str(path)]).exit_code == 0
    again = runner.invoke(app, ["train", str(path)])
    assert again.exit_code == 2 and "already holds a run" in again.output and "--overwrite" in again.output
    assert runner.invoke(app, ["train", str(path), "--overwrite"]).exit_code == 0


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, tiny_path):
    result = runner.invoke(app, ["train", str(recipe_file(tmp_path, tiny_path)), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "trainable parameters" in result.output and "fp32" in result.output
    assert all(row in result.output for row in ("device", "cpu", "attention", "sft_varlen", "loss", "chunked"))
    assert "padding_free" in result.output and "tokens and 4 examples per step" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"trainer_args": {"gradient_checkpointin": True}}, "did you mean 'gradient_checkpointing'"),
        ({"trainer_args": {"output_dir": "x"}}, "set by sft itself"),
        ({"training": {"precision": "fp16"}}, "fp16 needs a CUDA GPU"),
        ({"lora": {"load_in_4bit": True}}, "needs a CUDA GPU"),
    ],
)
def test_bad_recipes_fail_before_any_model_loads(tmp_path, fields, message):
    missing_model = tmp_path / "no-such-model"  # loading it would fail differently: proves we stop earlier
    missing_model.mkdir()
    result = runner.invoke(app, ["train", str(recipe_file(tmp_path, missing_model, **fields))])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP and DeepSpeed run on GPUs")
@pytest.mark.parametrize("config", ["fsdp", "deepspeed"])
def test_gpu_only_accelerate_config_is_refused_on_cpu(tmp_path, tiny_path, config):
    """accelerate would start plain DDP processes on CPU under an FSDP/DeepSpeed config: say so, start nothing."""
    path = recipe_file(tmp_path, tiny_path, training={"max_steps": 1})
    config_path = ROOT / "configs" / "accelerate" / f"{config}.yaml"
    result = runner.invoke(app, ["train", str(path), "--accelerate-config", str(config_path), "--num-processes", "2"])
    assert result.exit_code == 2, result.output
    assert f"{config_path}: distributed_type {config.upper()} needs CUDA GPUs" in " ".join(result.output.split())
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_two_processes_on_cpu(tmp_path, tiny_path):
    rows = [{"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(16)]
    path = recipe_file(tmp_path, tiny_path, rows=rows, training={"max_steps": 3})
    result = subprocess.run(
        [sys.executable, "-m", "sft_cli", "train", str(path), "--num-processes", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    env = record["plan"]["environment"]
    assert env["processes"] == 2 and env["sharding"] == "ddp" and env["loss"] == "full logits"  # DDP: no chunked loss
    first, second = record["first_batch_rows_by_rank"]
    assert first and second and not set(first) & set(second)
    # rank 0 encoded the rows (main process first); rank 1 read what it wrote
    assert record["prepared_by_rank"] == [{"train": "encoded"}, {"train": "cache"}]
    steps = [m["step"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert steps == sorted(set(steps))  # one writer: no step logged twice
    assert result.stdout.count("completed") == 1
