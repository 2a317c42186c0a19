"""The run's environment decision (training/environment.py): its table of hardware x libraries x recipe -> choice,
fixed without a GPU, and the two choices a CPU can prove by training: fp32 master weights under bf16 autocast, and
the memory forecast following the decision."""

from __future__ import annotations

import json

import pytest
import torch
from recipes import metrics, recipe_file
from safetensors.torch import load_file

from sft_cli.device import Hardware
from sft_cli.encoding.loading import load_model_skeleton
from sft_cli.errors import SftError
from sft_cli.recipe.schema import load_recipe
from sft_cli.training.environment import (
    CHUNKED,
    FULL_LOGITS,
    FUSED,
    VARLEN,
    Launch,
    ModelFacts,
    decide,
    detect_launch,
    processes_to_start,
)
from sft_cli.training.memory import forecast, model_shape
from sft_cli.training.run import train

CPU = Hardware()
H100 = Hardware(gpus=1, name="NVIDIA H100", capability=(9, 0), native_bf16=True, flash_attn=None, bitsandbytes=True)
T4 = Hardware(gpus=1, name="Tesla T4", capability=(7, 5), native_bf16=False, flash_attn=None)
A100_NO_FLASH = Hardware(1, "NVIDIA A100", (8, 0), True, "the flash_attn package is not installed")
LLAMA = ModelFacts(kind="LlamaForCausalLM")


@pytest.fixture
def recipe_of(tmp_path, tiny_path):
    def make(training=None, **fields):
        return load_recipe(recipe_file(tmp_path, tiny_path, training=training or {}, **fields)).recipe

    return make


@pytest.mark.parametrize(
    ("hardware", "training", "precision", "attention", "loss", "note"),
    [
        (CPU, {}, "fp32", VARLEN, CHUNKED, None),
        (CPU, {"precision": "bf16"}, "bf16", VARLEN, CHUNKED, "8x slower"),
        (H100, {}, "bf16", "flash_attention_2", FUSED, "fp32 master weights under bf16 autocast"),
        (T4, {}, "fp16", VARLEN, FUSED, "compute capability 8.0+, Tesla T4 has 7.5"),
        (T4, {"precision": "bf16"}, "bf16", VARLEN, FUSED, "emulated"),
        (A100_NO_FLASH, {}, "bf16", VARLEN, FUSED, "flash_attn package is not installed"),
        (H100, {"precision": "fp32"}, "fp32", VARLEN, FUSED, "runs in bf16 or fp16 only"),
        (H100, {"padding_free": False}, "bf16", "sdpa", FUSED, None),
        (CPU, {"chunked_loss": False}, "fp32", VARLEN, FULL_LOGITS, None),
    ],
)
def test_the_decision_table(recipe_of, hardware, training, precision, attention, loss, note):
    env = decide(recipe_of(training), hardware, Launch(), LLAMA)
    assert (env.precision, env.attention, env.loss) == (precision, attention, loss)
    assert env.trained_weights == "fp32"  # full fine-tuning keeps fp32 master weights in every precision
    if note:
        assert any(note in n for n in env.notes), env.notes
    elif hardware is CPU:
        assert env.notes == ()


def test_the_model_decides_what_it_cannot_run(recipe_of):
    recipe = recipe_of()
    gemma2 = ModelFacts(kind="Gemma2ForCausalLM", loaded_attention="eager", own_attention="logit soft-capping")
    env = decide(recipe, H100, Launch(), gemma2)
    assert env.attention == "eager" and "logit soft-capping" in env.notes[-1]
    no_flash = decide(recipe, H100, Launch(), ModelFacts(kind="OldForCausalLM", supports_flash=False))
    assert no_flash.attention == VARLEN and "OldForCausalLM does not support it" in " ".join(no_flash.notes)
    scaled_logits = decide(recipe, CPU, Launch(), ModelFacts(kind="X", plain_head=False))
    assert scaled_logits.loss == FULL_LOGITS and "more than its head's product" in scaled_logits.notes[0]
    ddp = decide(recipe, CPU, Launch(processes=2, sharding="ddp"), LLAMA)
    assert ddp.loss == FULL_LOGITS and ddp.processes == 2


def test_lora_weights_follow_the_base_and_the_sharding(recipe_of):
    lora = recipe_of(lora={"r": 4})
    plain = decide(lora, H100, Launch(), LLAMA)
    assert (plain.trained_weights, plain.frozen_weights, plain.load_dtype) == ("fp32", "bf16", "bfloat16")
    zero3 = decide(lora, H100, Launch(processes=2, sharding="zero3"), LLAMA)
    assert zero3.trained_weights == zero3.frozen_weights == "bf16" and "ZeRO-3" in zero3.notes[-1]
    qlora = decide(recipe_of(lora={"r": 4, "load_in_4bit": True}), H100, Launch(), LLAMA)
    assert (qlora.trained_weights, qlora.frozen_weights) == ("bf16", "nf4")
    full = decide(recipe_of(), H100, Launch(), LLAMA)
    assert full.load_dtype == "float32"  # bf16 autocast over fp32 weights


def test_what_the_hardware_cannot_run_is_refused(recipe_of):
    with pytest.raises(SftError, match="fp16 needs a CUDA GPU"):
        decide(recipe_of({"precision": "fp16"}), CPU, Launch(), LLAMA)
    with pytest.raises(SftError, match="QLoRA.* needs a CUDA GPU"):
        decide(recipe_of(lora={"r": 4, "load_in_4bit": True}), CPU, Launch(), LLAMA)
    with pytest.raises(SftError, match="needs bitsandbytes"):
        decide(recipe_of(lora={"r": 4, "load_in_4bit": True}), T4, Launch(), LLAMA)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, Launch()),
        ({"WORLD_SIZE": "2", "RANK": "1"}, Launch(2, 1, "ddp")),
        ({"WORLD_SIZE": "8", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, Launch(8, 0, "fsdp2")),
        (
            {"WORLD_SIZE": "4", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
            Launch(4, 0, "zero3"),
        ),
    ],
)
def test_the_launch_is_read_from_the_launchers_variables(environ, expected):
    assert detect_launch(environ) == expected


def test_several_gpus_start_one_process_each_unless_told():
    assert processes_to_start(4, Launch(), None) == 4  # plain `sft train` on a 4-GPU machine
    assert processes_to_start(4, Launch(), 1) == 1  # --num-processes 1: one GPU
    assert processes_to_start(4, Launch(4, 2, "ddp"), None) == 1  # already a launched rank
    assert processes_to_start(0, Launch(), None) == 1  # CPU


def test_the_forecast_follows_the_environment(recipe_of):
    """Sharding divides weights, gradients and optimizer state by the processes; a 4-bit base weighs about a
    quarter of a bf16 one; on CUDA the loss never holds the full logits, so no chunked-loss fix is offered."""
    recipe = recipe_of({"chunked_loss": False})
    shape = model_shape(load_model_skeleton(recipe.model), 0.0)
    lengths = [60] * 64

    def parts(env):
        return forecast(recipe, shape, lengths, 0.5, "padding_free", 0, env).parts

    one = parts(decide(recipe, H100, Launch(), LLAMA))
    zero3 = parts(decide(recipe, H100, Launch(4, 0, "zero3"), LLAMA))
    zero2 = parts(decide(recipe, H100, Launch(4, 0, "zero2"), LLAMA))
    assert one["weights"] == 4 * shape.total_parameters  # fp32 master weights
    assert zero3["weights"] == one["weights"] // 4 and zero3["optimizer"] == one["optimizer"] // 4
    assert zero2["weights"] == one["weights"] and zero2["gradients"] == one["gradients"] // 4
    assert one["logits"] < parts(decide(recipe, CPU, Launch(), LLAMA))["logits"]  # fused head vs full logits
    qlora = recipe_of(lora={"r": 4, "load_in_4bit": True})
    bf16 = recipe_of(lora={"r": 4})
    nf4, bf16_base = (decide(r, H100, Launch(), LLAMA).weight_bytes(trainable=False) for r in (qlora, bf16))
    assert bf16_base == 2 and nf4 < 0.3 * bf16_base


@pytest.mark.slow
def test_bf16_full_fine_tuning_moves_every_weight_and_learns_like_fp32(tmp_path, tiny_path):
    """bf16 keeps 8 mantissa bits: AdamW steps of lr 2e-5 round away on bf16 weights (3 steps changed 30% of the
    tiny model's decoder weights). Under fp32 master weights every decoder weight moves, the model is saved in
    fp32, and the loss curve follows fp32's."""
    runs = {}
    for precision in ("fp32", "bf16"):
        folder = tmp_path / precision
        folder.mkdir()
        training = {"precision": precision, "learning_rate": 2e-5, "max_steps": 3, "save_steps": 10}
        run_dir = train(load_recipe(recipe_file(folder, tiny_path, training=training))).run_dir
        plan = json.loads((run_dir / "run.json").read_text())["plan"]
        assert plan["environment"]["precision"] == precision and plan["environment"]["trained_weights"] == "fp32"
        runs[precision] = (run_dir, [m["loss"] for m in metrics(run_dir) if "loss" in m])
    base = load_file(tiny_path / "model.safetensors")
    tuned = load_file(runs["bf16"][0] / "model.safetensors")
    decoder = [name for name in base if ".layers." in name and name.endswith("proj.weight")]
    assert decoder and all(tuned[name].dtype == torch.float32 for name in decoder)
    moved = sum(int((tuned[n] != base[n]).sum()) for n in decoder) / sum(base[n].numel() for n in decoder)
    assert moved > 0.999, f"only {moved:.1%} of the decoder weights moved"
    fp32_losses, bf16_losses = runs["fp32"][1], runs["bf16"][1]
    assert len(bf16_losses) == len(fp32_losses) == 3
    assert bf16_losses == pytest.approx(fp32_losses, rel=0.02)
