"""What a run is set up with, decided from the recipe and the hardware: processes, device and precision, TRL's
arguments (every recipe field passed explicitly), LoRA and quantization."""

from __future__ import annotations

from pathlib import Path

from sft_cli.errors import SftError
from sft_cli.recipe.schema import Recipe
from sft_cli.runs.record import CHECKPOINTS
from sft_cli.training.environment import Environment

DDP_TIMEOUT_S = 1800  # transformers' default for `ddp_timeout`


def process_group_timeout(recipe: Recipe) -> int:
    """Seconds a collective may wait: the recipe's `trainer_args.ddp_timeout`, also while rank 0 encodes the data or
    saves the model (the process group exists before the trainer does, so it must be given it at creation)."""
    return int(recipe.trainer_args.get("ddp_timeout", DDP_TIMEOUT_S))


def distributed_state(timeout_s: int | None = None):
    """Accelerate's process state (created once; the first call's timeout holds); on a machine without GPU it must
    be told so to form a gloo group."""
    from datetime import timedelta

    from accelerate import PartialState

    if timeout_s is None:
        return PartialState(cpu=no_gpu())
    return PartialState(cpu=no_gpu(), timeout=timedelta(seconds=timeout_s))


def gathered(value) -> list:
    """`value` from every process, in rank order (a list of one when not distributed)."""
    from accelerate.utils import gather_object

    return gather_object([value])


def checkpoint_step(checkpoint: str | None) -> int | None:
    """The step a checkpoint folder (`checkpoint-<step>`) was saved at; None when not resuming."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else None


def no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def trainer_arg_names() -> set[str]:
    """Field names of TRL's SFTConfig (which extends transformers' TrainingArguments), from the real class."""
    import dataclasses

    from trl import SFTConfig

    return {f.name for f in dataclasses.fields(SFTConfig)}


def layout(recipe: Recipe) -> str:
    """packed | padding_free | padded, from the recipe's two switches."""
    t = recipe.training
    return "packed" if t.packing else "padding_free" if t.padding_free else "padded"


def sft_config(recipe: Recipe, run_dir: Path, env: Environment, has_eval: bool):
    """TRL's arguments, every recipe field passed explicitly (TRL's own defaults differ from transformers': e.g.
    gradient checkpointing on, bf16 on; none of them may decide silently; tests/training/test_train_config.py checks
    every field)."""
    from trl import SFTConfig

    t = recipe.training
    early = t.early_stopping
    padding_free = t.padding_free
    args = dict(
        output_dir=str(run_dir / CHECKPOINTS),
        learning_rate=recipe.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a share of the steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a non-finite loss is logged as it is and stops the run (callbacks.py)
        eval_strategy="steps" if has_eval else "no",
        eval_steps=recipe.eval_steps if has_eval else None,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=bool(early),
        metric_for_best_model=early.metric if early else None,
        greater_is_better=(not early.metric.endswith("loss")) if early else None,
        report_to=[],  # sft drives the trackers itself (trackers.py)
        use_cpu=not env.on_cuda,
        bf16=env.precision == "bf16",  # autocast: the weights' dtypes are the environment's (environment.py)
        fp16=env.precision == "fp16",
        # every trainable parameter takes part in every step (full fine-tuning and LoRA alike): no extra autograd
        # traversal per step, which transformers would switch on for any PeftModel
        ddp_find_unused_parameters=False,
        ddp_timeout=process_group_timeout(recipe),
        activation_checkpointing=t.gradient_checkpointing,  # TRL would default to True
        disable_tqdm=True,
        # padding-free batches have no padding; the pad id may be a real token (EOS) that "non_padding" would miss
        include_num_input_tokens_seen="all" if padding_free else "non_padding",
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        max_length=None,
    )
    args.update(recipe.trainer_args)  # expert options win; checked against SFTConfig's fields already
    config = SFTConfig(**args)
    if config.n_gpu > 1:  # one process asked for on a machine of several GPUs: train on the first only (Trainer
        config._n_gpu = 1  # would wrap the model in nn.DataParallel, which TRL refuses)
    return config


def with_adapters(model, recipe: Recipe, tokenizer, env: Environment):
    """The model as it trains: wrapped in LoRA when the recipe asks, the template's special tokens' embedding rows
    trained too. The one path for training and the memory forecast."""
    if not recipe.lora:
        return model
    from sft_cli.encoding.templates import extra_special_tokens

    new_ids = tokenizer.convert_tokens_to_ids(extra_special_tokens(recipe.template))
    return lora_model(model, recipe, new_ids, env)


def lora_model(model, recipe: Recipe, new_token_ids: list[int], env: Environment | None = None):
    """Wrap in PEFT LoRA. The embedding rows of the template's special tokens train too, and are saved in the
    adapter. Only input-embedding rows: TRL's fused LM head reads the output layer's weights directly, past any
    PEFT wrapper, so output-layer rows stay at their mean initialisation (tied models share them anyway)."""
    from peft import LoraConfig, get_peft_model

    lora = recipe.lora
    check_target_modules(model, lora.target_modules)
    trainable_tokens = None
    if new_token_ids:
        names = {module: name for name, module in model.named_modules()}
        trainable_tokens = {names[model.get_input_embeddings()].split(".")[-1]: list(new_token_ids)}
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
        trainable_token_indices=trainable_tokens,
    )
    # adapters in fp32 over a bf16 base (PEFT's default), unless the environment keeps them in the base's dtype
    same_dtype = env is not None and env.trained_weights == env.frozen_weights
    peft_model = get_peft_model(model, config, autocast_adapter_dtype=not same_dtype)
    output = peft_model.get_output_embeddings()
    original = getattr(output, "original_module", None)
    if original is not None and "bias" not in dir(output):
        # PEFT wraps a tied output layer but does not expose its `bias`, which TRL's fused LM head reads
        output.bias = original.bias
    return peft_model


def check_target_modules(model, targets: str | list[str]) -> None:
    """Every module name lora.target_modules lists exists in the model (PEFT's own error lists none of them)."""
    if isinstance(targets, str):
        return  # "all-linear", or a regular expression PEFT matches itself
    import torch

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        kind = type(model).__name__
        raise SftError(
            f"lora.target_modules: {', '.join(missing)} not in {kind}; its linear modules: {', '.join(linear)}",
            hint="name some of those, or use target_modules: all-linear",
        )


def compile_decoder_layers(model) -> int:
    """torch.compile each decoder layer in place, with dynamic shapes: padding-free batches change their token
    count every step, and one graph per layer kind serves them all (the per-sequence attention's Python loop stays
    eager between graphs). In place, so state-dict names, checkpoints and the saved model are unchanged. Whole-model
    compilation (TRL's `torch_compile`) was slower on CPU in a steady-state probe. Returns the layers compiled."""
    import torch
    import torch._dynamo

    depth = model.config.get_text_config().num_hidden_layers
    layers = next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth), [])
    torch._dynamo.reset()  # a run counts its own graphs (compile_counts)
    torch._dynamo.utils.counters.clear()
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def compile_counts() -> dict:
    """TorchDynamo's counts since the layers were compiled, for run.json: the graphs captured and the frames compiled.
    With dynamic shapes they stay the same however many batch shapes the run sees (no recompilation per step)."""
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"], "frames_compiled": counters["frames"]["ok"]}


def quantization(recipe: Recipe, env: Environment):
    """QLoRA's 4-bit config (the environment checked that a GPU and bitsandbytes are there): nf4 weights computed
    in the run's 16-bit precision, and stored in it too, so FSDP can shard them with the other parameters."""
    if not (recipe.lora and recipe.lora.load_in_4bit):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.float16 if env.precision == "fp16" else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_quant_storage=compute,
    )
