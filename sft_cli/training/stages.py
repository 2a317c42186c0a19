"""The named setup stages of `sft train` (training/run.py runs them in order): the run folder, the data, the model
and the trainer, each returning one object, so everything that can fail fails before the first step."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

from sft_cli.encoding.loading import load_model
from sft_cli.encoding.mixing import Mix, prepare_data
from sft_cli.encoding.rendered import RenderOptions
from sft_cli.errors import SftError
from sft_cli.progress import Progress
from sft_cli.recipe.schema import LoadedRecipe, Recipe
from sft_cli.runs.folder import (
    RunFolder,
    RunLock,
    choose_run_dir,
)
from sft_cli.runs.generate import pad_id, stop_token_ids
from sft_cli.training.attention import use_attention
from sft_cli.training.batching import BatchPlan, Collator, bins_dataset, plan_batches, sequence_lengths
from sft_cli.training.callbacks import RunState, make_callbacks
from sft_cli.training.environment import Environment
from sft_cli.training.generation_eval import GenerationEval
from sft_cli.training.memory import resident_bytes
from sft_cli.training.plan import Plan
from sft_cli.training.setup import (
    compile_decoder_layers,
    layout,
    quantization,
    with_adapters,
)
from sft_cli.training.trackers import Trackers


@dataclass
class TrainingData:
    """The run's tokenizer and render options (computed once), its sources' prepared splits and their mix, and the
    train batches."""

    tokenizer: Any
    options: RenderOptions
    mix: Mix
    train_rows: Any  # datasets.Dataset, memory-mapped, opened once
    eval_rows: Any | None  # one eval set, or {source label: eval set} for several sources
    batch_plan: BatchPlan
    lengths: list[int]  # of every train example, in tokens
    bins: list[list[int]] | None  # packed bins of train row indices, when packing
    temporary: str | None  # under --no-cache, the prepared data's folder, removed when the run ends


@dataclass
class TrainingModel:
    """The model as it trains, and the attention it was loaded with (restored before saving: a saved model must
    not need sft's attention)."""

    model: Any
    loaded_attention: str
    runtime: int  # the process's resident bytes before the model loaded (the memory forecast's runtime part)


def setup_run_folder(
    loaded: LoadedRecipe, distributed, resume: bool, overwrite: bool
) -> tuple[RunFolder, RunLock | None]:
    """Decided once on the main process (a default folder name holds a timestamp), shared by every rank; the
    main process holds the folder's lock."""
    from accelerate.utils import broadcast_object_list

    decided = [choose_run_dir(loaded, resume, overwrite) if distributed.is_main_process else None]
    try:
        folder, lock = broadcast_object_list(decided)[0] if distributed.num_processes > 1 else decided[0]
    except TypeError:  # rank 0 raised; the others stop quietly, rank 0 explains
        raise SystemExit(2) from None
    return folder, lock if distributed.is_main_process else None


def setup_data(recipe: Recipe, distributed, no_cache: bool, progress: Progress) -> TrainingData:
    """The same rows and the same encode function as `sft preview`, prepared once and cached. The main process
    encodes (or finds the cache) first; the others then read what it wrote, so a multi-process run encodes once.
    With `no_cache` the main process encodes into a temporary folder that every rank reads and the main process
    removes at the end."""
    from accelerate.utils import broadcast_object_list

    root = [tempfile.mkdtemp(prefix="sft-prepared-") if no_cache and distributed.is_main_process else None]
    if distributed.num_processes > 1:
        root = broadcast_object_list(root)
    with distributed.main_process_first():
        prepared = prepare_data(
            recipe,
            ("train", "eval"),
            cache=not no_cache,
            root=root[0],
            progress=progress if distributed.is_main_process else Progress(),
        )
    tokenizer, options, mix = prepared.tokenizer, prepared.options, prepared.mix
    if not mix.examples:
        raise SftError(
            "no training examples left after encoding",
            hint="run `sft preview` to see why rows were dropped (max_length, on_overflow)",
        )
    if distributed.is_main_process:
        for warning in mix.warnings():
            progress.note(f"warning: {warning}")
    t = recipe.training
    train_rows = mix.train_dataset().remove_columns(["truncated"])
    eval_rows = mix.eval_datasets()
    if isinstance(eval_rows, dict):
        eval_rows = {label: rows.remove_columns(["truncated"]) for label, rows in eval_rows.items()}
    elif eval_rows is not None:
        eval_rows = eval_rows.remove_columns(["truncated"])
    lengths = sequence_lengths(train_rows)
    batch_plan, bins = plan_batches(
        lengths,
        t.batch_size,
        t.gradient_accumulation_steps,
        layout(recipe),
        recipe.max_length,
        t.seed,
    )
    return TrainingData(tokenizer, options, mix, train_rows, eval_rows, batch_plan, lengths, bins, root[0])


def setup_model(recipe: Recipe, env: Environment, tokenizer) -> TrainingModel:
    """The model in the environment's dtypes (fp32 master weights for full fine-tuning) and attention, with LoRA
    adapters when asked; the template's special tokens get embedding rows (trained under LoRA too)."""
    import torch

    quantization_config = quantization(recipe, env)
    runtime = resident_bytes()
    model = load_model(recipe.model, getattr(torch, env.load_dtype), quantization_config, len(tokenizer))
    loaded_attention = model.config._attn_implementation
    use_attention(model, env.attention)
    model = with_adapters(model, recipe, tokenizer, env)
    if recipe.training.compile:
        compile_decoder_layers(model)
    return TrainingModel(model, loaded_attention, runtime)


def generation_eval(recipe: Recipe, data: TrainingData, model: TrainingModel, plan: Plan) -> GenerationEval | None:
    """What answers eval rows at every evaluation (training.eval_generate), stopping where training taught; its
    cost goes into the plan (`plan.eval_generate`)."""
    wanted = recipe.training.eval_generate
    if wanted is None or data.eval_rows is None:
        return None
    tokenizer = data.tokenizer
    stops = stop_token_ids(tokenizer, data.options)
    generation = GenerationEval(
        wanted.rows, wanted.max_new_tokens, stops, pad_id(tokenizer), tokenizer, plan.environment.attention,
        model.loaded_attention,
    )  # fmt: skip
    # timed only where the whole model is in this process (sharded weights generate inside the trainer only), on
    # the device it trains on: the trainer would move it there next
    sets = data.eval_rows if isinstance(data.eval_rows, dict) else {"eval": data.eval_rows}  # per source or one
    on_device = plan.environment.processes == 1 and on_training_device(model.model, plan.environment)
    seconds = sum(generation.estimate_seconds(model.model, rows) for rows in sets.values()) if on_device else None
    plan.eval_generate = {
        "rows": sum(min(wanted.rows, len(rows)) for rows in sets.values()),
        "max_new_tokens": wanted.max_new_tokens,
        "evaluations": plan.steps // recipe.eval_steps,
        "seconds_per_evaluation": None if seconds is None else round(seconds, 2),
    }
    return generation


def on_training_device(model, env: Environment) -> bool:
    """Whether the model is (now) on the device it will train on: a GPU run's model is moved there as the trainer
    would move it; one placed by its quantization stays where it is."""
    if not env.device.startswith("cuda"):
        return True
    if next(model.parameters()).device.type != "cuda" and not getattr(model, "is_quantized", False):
        model.to("cuda")
    return next(model.parameters()).device.type == "cuda"


def setup_trainer(
    recipe: Recipe,
    args,
    plan: Plan,
    data: TrainingData,
    model: TrainingModel,
    state: RunState,
    progress: Progress,
    trackers: Trackers | None,
    generation: GenerationEval | None = None,
):
    """TRL's SFTTrainer with `args` (setup.sft_config) on the prepared rows, with sft's collator, callbacks and
    loss; `trackers` on the main process only."""
    from transformers import PrinterCallback

    from sft_cli.training.trainer import SftTrainer

    padding_free = recipe.training.padding_free
    trainer = SftTrainer(
        model=model.model,
        loss=plan.environment.loss,
        generation=generation,
        args=args,
        train_dataset=bins_dataset(data.bins) if data.bins is not None else data.train_rows,
        eval_dataset=data.eval_rows,
        processing_class=data.tokenizer,
        data_collator=Collator(data.tokenizer.pad_token_id, padding_free=padding_free, source=data.train_rows),
        callbacks=make_callbacks(
            recipe, plan.run_dir, progress, trackers is not None, state, trackers, plan.memory.total
        ),
    )
    trainer.remove_callback(PrinterCallback)  # our progress view replaces the raw log dicts
    return trainer
