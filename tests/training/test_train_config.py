"""Every recipe training field reaches the trainer: no TRL default (gradient checkpointing on, bf16 on) decides
in its place. A new field in the recipe fails this test until it is wired and listed here."""

from __future__ import annotations

from pathlib import Path

from recipes import recipe_file

from sft_cli.device import Hardware
from sft_cli.progress import Progress
from sft_cli.recipe.schema import load_recipe
from sft_cli.recipe.sections import TrainingSection
from sft_cli.training.callbacks import RunState, make_callbacks
from sft_cli.training.environment import Launch, ModelFacts, decide
from sft_cli.training.setup import layout, sft_config

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
# drive sft's own trackers (tests/training/test_trackers.py), never transformers' integrations
TRACKER_FIELDS = {"report_to": ["tensorboard"], "tracker_project": "project"}
# choose the loss computation (tests/training/test_chunked_loss.py)
LOSS_FIELDS = {"chunked_loss": False}
# compile the decoder layers in sft, not TRL's whole-model torch_compile (tests/training/test_compile.py)
COMPILE_FIELDS = {"compile": True}
# answer eval rows at every evaluation, in sft's trainer (tests/training/test_generation_eval.py)
EVAL_FIELDS = {"eval_generate": {"rows": 4}}


def config_for(tmp_path: Path, tiny_path: Path, training: dict):
    path = recipe_file(tmp_path, tiny_path, training=training, data={"eval_fraction": 0.25})
    recipe = load_recipe(path).recipe
    env = decide(recipe, Hardware(), Launch(), ModelFacts())
    return recipe, sft_config(recipe, Path("run"), env, True)


def test_every_training_field_is_listed():
    listed = set(NON_DEFAULT) | set(BATCH_FIELDS) | set(TRACKER_FIELDS) | set(LOSS_FIELDS) | set(COMPILE_FIELDS)
    listed |= set(EVAL_FIELDS)
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
    # transformers would turn it on for any PeftModel: an extra autograd traversal each step under DDP
    assert config.ddp_find_unused_parameters is False and config.ddp_timeout == 1800
    assert layout(recipe) == "padding_free" and config.include_num_input_tokens_seen == "all"


def test_the_trainer_arguments_exist_before_the_model_loads(tmp_path, tiny_path, monkeypatch):
    """Under DeepSpeed ZeRO-3 the arguments set up `zero.Init`, which makes each rank load only its partition of
    the weights: they must be built before the model is."""
    import sft_cli.training.run as run
    import sft_cli.training.stages as stages

    order = []
    real_config, real_load = run.sft_config, stages.load_model
    monkeypatch.setattr(run, "sft_config", lambda *a, **k: order.append("arguments") or real_config(*a, **k))
    monkeypatch.setattr(stages, "load_model", lambda *a, **k: order.append("model") or real_load(*a, **k))
    run.setup_session(load_recipe(recipe_file(tmp_path, tiny_path)), dry_run=True)
    assert order == ["arguments", "model"]
