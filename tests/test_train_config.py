"""Every recipe training field reaches the trainer: no TRL default (gradient checkpointing on, bf16 on) decides
in its place. A new field in the recipe fails this test until it is wired and listed here."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train import recipe_file

from sft_cli.progress import Progress
from sft_cli.recipe.schema import load_recipe
from sft_cli.recipe.sections import TrainingSection
from sft_cli.training.callbacks import RunState, make_callbacks
from sft_cli.training.setup import layout, pick_precision, sft_config

# every training field set away from its default; value in the recipe -> what SFTConfig must hold
NON_DEFAULT = {
    "learning_rate": (1e-3, "learning_rate", 1e-3),
    "epochs": (2.0, "num_train_epochs", 2.0),
    "max_steps": (7, "max_steps", 7),
    "batch_size": (3, "per_device_train_batch_size", 3),
    "gradient_accumulation_steps": (2, "gradient_accumulation_steps", 2),
    "lr_scheduler": ("linear", "lr_scheduler_type", "linear"),
    "warmup_ratio": (0.1, "warmup_steps", 0.1),
    "weight_decay": (0.01, "weight_decay", 0.01),
    "max_grad_norm": (0.5, "max_grad_norm", 0.5),
    "seed": (7, "seed", 7),
    "eval_steps": (2, "eval_steps", 2),
    "save_steps": (4, "save_steps", 4),
    "save_total_limit": (3, "save_total_limit", 3),
    "logging_steps": (2, "logging_steps", 2),
    "early_stopping": ({"patience": 2, "metric": "eval_loss"}, "metric_for_best_model", "eval_loss"),
    "precision": ("bf16", "bf16", True),
    "gradient_checkpointing": (True, "activation_checkpointing", True),
}
# shape the batches (the collator and sampler), not SFTConfig: checked through `layout`
BATCH_FIELDS = {"padding_free": False, "packing": False}
# drive sft's own trackers (tests/test_trackers.py), never transformers' integrations
TRACKER_FIELDS = {"report_to": ["tensorboard"], "tracker_project": "project"}
# choose the loss computation (tests/test_chunked_loss.py)
LOSS_FIELDS = {"chunked_loss": False}
# compile the decoder layers in sft, not TRL's whole-model torch_compile (tests/test_compile.py)
COMPILE_FIELDS = {"compile": True}


def config_for(tmp_path: Path, tiny_path: Path, training: dict):
    path = recipe_file(tmp_path, tiny_path, training=training, data={"eval_fraction": 0.25})
    recipe = load_recipe(path).recipe
    _, precision = pick_precision(recipe.training.precision)
    return recipe, sft_config(recipe, Path("run"), precision, True, recipe.training.padding_free)


def test_every_training_field_is_listed():
    listed = set(NON_DEFAULT) | set(BATCH_FIELDS) | set(TRACKER_FIELDS) | set(LOSS_FIELDS) | set(COMPILE_FIELDS)
    assert set(TrainingSection.model_fields) == listed
    for name, (value, _, _) in NON_DEFAULT.items():
        assert TrainingSection.model_fields[name].default != value, name


def test_every_training_field_reaches_sft_config(tmp_path, tiny_path):
    training = {name: value for name, (value, _, _) in NON_DEFAULT.items()} | BATCH_FIELDS | TRACKER_FIELDS
    recipe, config = config_for(tmp_path, tiny_path, training)
    for name, (_, attribute, expected) in NON_DEFAULT.items():
        assert getattr(config, attribute) == expected, (name, attribute, getattr(config, attribute))
    assert config.load_best_model_at_end and config.data_seed == 7 and config.per_device_eval_batch_size == 3
    assert layout(recipe) == "padded" and config.include_num_input_tokens_seen == "non_padding"
    assert config.report_to in ([], ["none"]), "transformers' tracker callbacks would log everything twice"
    early = [
        c
        for c in make_callbacks(recipe, tmp_path, Progress(), True, RunState(), None, 2**30)
        if hasattr(c, "early_stopping_patience")
    ]
    assert early[0].early_stopping_patience == 2


def test_defaults_are_sft_defaults_not_trl_defaults(tmp_path, tiny_path):
    recipe, config = config_for(tmp_path, tiny_path, {})
    assert config.activation_checkpointing is False and config.gradient_checkpointing is False  # TRL: True
    assert config.bf16 is False and config.fp16 is False  # TRL: bf16 True; on CPU sft trains in fp32
    assert layout(recipe) == "padding_free" and config.include_num_input_tokens_seen == "all"


@pytest.mark.parametrize(("gpu", "native", "expected"), [("NVIDIA H100", True, "bf16"), ("Tesla T4", False, "fp16")])
def test_auto_precision_takes_bf16_only_where_the_gpu_runs_it_natively(monkeypatch, gpu, native, expected):
    """torch counts emulated bf16 as supported (T4, V100): `auto` must pick fp16 there, not a slow bf16."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert pick_precision("auto") == (f"cuda ({gpu})", expected)
