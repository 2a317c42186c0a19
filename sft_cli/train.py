"""`sft train`: recipe -> encoded dataset -> TRL SFTTrainer (+PEFT, +Accelerate) -> a complete run folder.

Read top to bottom: `prepare` (everything that can fail fails before the first step), `run` (the training),
then `run_folder.finish` (atomic final save, metrics, plot, run.json). Batches come from `batching.py`
(padding-free by default) with the attention of `attention.py`. The dataset handed to TRL is the output of
`encode_rows`, the function `sft preview` shows; TRL is told to skip its own preparation, so it neither re-tokenizes
nor re-masks.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_cli.attention import restore_attention, use_sequence_attention
from sft_cli.batching import Collator, bins_dataset, plan_batches, sequence_lengths
from sft_cli.callbacks import make_callbacks
from sft_cli.errors import SftError
from sft_cli.recipe import LoadedRecipe, Recipe
from sft_cli.run_folder import CHECKPOINTS, choose_run_dir, finish
from sft_cli.trainer_fields import check_trainer_args


class Reporter:
    """How a run talks to the user. This one is silent; the CLI's subclass draws a progress bar."""

    def note(self, message: str) -> None: ...
    def start(self, total_steps: int) -> None: ...
    def update(self, step: int, metrics: dict[str, float]) -> None: ...
    def stop(self) -> None: ...

    def encoding(self, split: str):
        """Progress callbacks while a split is encoded (none here)."""
        from sft_cli.prepared import Progress

        return Progress()


@dataclass
class Plan:
    """What a run will do, known before any step: printed by --dry-run and recorded in run.json."""

    run_dir: Path
    device: str
    precision: str
    world_size: int
    train_examples: int
    eval_examples: int
    train_tokens: int
    trained_tokens: int
    steps: int
    dropped: int
    truncated: int
    trainable_parameters: int = 0
    total_parameters: int = 0
    new_tokens: list[str] = field(default_factory=list)
    resume_from: str | None = None
    batching: dict = field(default_factory=dict)  # layout, tokens per step, padding share, packing efficiency
    attention: str = ""  # the attention implementation training runs with
    prepared: dict = field(default_factory=dict)  # per split: fingerprint, whether the cache had it, folder

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


# --- decisions made from the recipe and the hardware ---------------------------------------------------


def distributed_state():
    """Accelerate's process state; on a machine without GPU it must be told so to form a gloo group."""
    from accelerate import PartialState

    return PartialState(cpu=no_gpu())


def pick_precision(requested: str) -> tuple[str, str]:
    """(device, precision): bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU (bf16 is ~8x slower
    there). An explicit choice is honoured where the hardware can run it."""
    import torch

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
        auto = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        device, auto = "cpu", "fp32"
        if requested == "fp16":
            raise SftError("training.precision: fp16 needs a CUDA GPU", hint="use precision: auto (fp32 on CPU)")
    return device, auto if requested == "auto" else requested


def no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def trainer_arg_names() -> set[str]:
    """Field names of TRL's SFTConfig (which extends transformers' TrainingArguments), from the real class."""
    import dataclasses

    from trl import SFTConfig

    return {f.name for f in dataclasses.fields(SFTConfig)}


# --- the run ------------------------------------------------------------------------------------------


def prepared_splits(recipe: Recipe, tokenizer, distributed, no_cache: bool, reporter: Reporter):
    """The train (and eval) prepared datasets. The main process encodes (or finds the cache) first; the others
    then read what it wrote, so a multi-process run encodes once. With `no_cache` the main process encodes into a
    temporary folder that every rank reads and the main process removes at the end."""
    from accelerate.utils import broadcast_object_list

    from sft_cli.prepared import Progress, prepare_split

    root = [tempfile.mkdtemp(prefix="sft-prepared-") if no_cache and distributed.is_main_process else None]
    if distributed.num_processes > 1:
        root = broadcast_object_list(root)
    splits = ("train", "eval") if recipe.has_eval else ("train",)
    prepared = {}
    with distributed.main_process_first():
        for split in splits:
            progress = reporter.encoding(split) if distributed.is_main_process else Progress()
            prepared[split] = prepare_split(
                recipe, tokenizer, split, cache=not no_cache, root=root[0], progress=progress
            )
    return prepared, root[0]


def layout(recipe: Recipe) -> str:
    """packed | padding_free | padded, from the recipe's two switches."""
    t = recipe.training
    return "packed" if t.packing else "padding_free" if t.padding_free else "padded"


def sft_config(recipe: Recipe, run_dir: Path, precision: str, has_eval: bool, padding_free: bool):
    """TRL's arguments, every recipe field passed explicitly (TRL's own defaults differ from transformers': e.g.
    gradient checkpointing on, bf16 on; none of them may decide silently; tests/test_train_config.py checks every
    field)."""
    from trl import SFTConfig

    t = recipe.training
    early = t.early_stopping
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
        eval_strategy="steps" if has_eval else "no",
        eval_steps=recipe.eval_steps if has_eval else None,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=bool(early),
        metric_for_best_model=early.metric if early else None,
        greater_is_better=(not early.metric.endswith("loss")) if early else None,
        report_to=[] if t.report_to == "none" else [t.report_to],
        use_cpu=no_gpu(),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=t.gradient_checkpointing,  # TRL would default to True
        disable_tqdm=True,
        # padding-free batches have no padding; the pad id may be a real token (EOS) that "non_padding" would miss
        include_num_input_tokens_seen="all" if padding_free else "non_padding",
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        max_length=None,
    )
    args.update(recipe.trainer_args)  # expert options win; checked against SFTConfig's fields already
    return SFTConfig(**args)


def lora_model(model, recipe: Recipe, new_token_ids: list[int]):
    """Wrap in PEFT LoRA. The embedding rows of the template's special tokens train too, and are saved in the
    adapter. Only input-embedding rows: TRL's fused LM head reads the output layer's weights directly, past any
    PEFT wrapper, so output-layer rows stay at their mean initialisation (tied models share them anyway)."""
    from peft import LoraConfig, get_peft_model

    lora = recipe.lora
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
    peft_model = get_peft_model(model, config)
    output = peft_model.get_output_embeddings()
    original = getattr(output, "original_module", None)
    if original is not None and "bias" not in dir(output):
        # PEFT wraps a tied output layer but does not expose its `bias`, which TRL's fused LM head reads
        output.bias = original.bias
    return peft_model


def quantization(recipe: Recipe):
    if not (recipe.lora and recipe.lora.load_in_4bit):
        return None
    import torch

    if not torch.cuda.is_available():
        raise SftError("lora.load_in_4bit (QLoRA) needs a CUDA GPU", hint="set lora.load_in_4bit: false on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise SftError("lora.load_in_4bit needs bitsandbytes", hint="pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


@dataclass
class RunResult:
    run_dir: Path
    plan: Plan
    stop_reason: str
    resume_command: str | None = None


@dataclass
class Session:
    """A prepared run: everything loaded and checked, the trainer built, nothing trained yet."""

    loaded: LoadedRecipe
    plan: Plan
    tokenizer: Any
    trainer: Any = None
    collator: Any = None
    state: dict = field(default_factory=dict)
    is_main: bool = True
    overwrite: bool = False
    reporter: Reporter = field(default_factory=Reporter)
    temporary: str | None = None  # the prepared data's folder under --no-cache, removed when the run ends
    loaded_attention: str | None = None  # restored before saving: a saved model must not need sft's attention

    def discard_temporary(self) -> None:
        if self.temporary and self.is_main:
            shutil.rmtree(self.temporary, ignore_errors=True)


def prepare(
    loaded: LoadedRecipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    reporter: Reporter | None = None,
    stop_at_step: int | None = None,
    no_cache: bool = False,
) -> Session:
    """Load and check everything that can fail before the first step; build the trainer unless dry_run.
    `stop_at_step` delivers a real Ctrl-C at that step (tests of interrupt and resume use it)."""
    import torch
    from accelerate.utils import broadcast_object_list

    from sft_cli.loading import load_model, load_tokenizer
    from sft_cli.templates import extra_special_tokens

    reporter = reporter or Reporter()
    recipe = loaded.recipe
    check_trainer_args(recipe.trainer_args, trainer_arg_names(), str(loaded.path))
    distributed = distributed_state()
    if distributed.is_main_process:  # decided once (a default folder name holds a timestamp), shared by all ranks
        decided = [choose_run_dir(loaded, resume, overwrite)]
    else:
        decided = [None]
    try:
        run_dir, resume_from = broadcast_object_list(decided)[0] if distributed.num_processes > 1 else decided[0]
    except TypeError:  # rank 0 raised; the others stop quietly, rank 0 explains
        raise SystemExit(2) from None
    device, precision = pick_precision(recipe.training.precision)
    quant = quantization(recipe)

    # the same rows and the same encode function as `sft preview`, prepared once and cached
    tokenizer = load_tokenizer(recipe)
    prepared, temporary = prepared_splits(recipe, tokenizer, distributed, no_cache, reporter)
    train_set, eval_set = prepared["train"], prepared.get("eval")
    if not train_set.stats.examples:
        raise SftError(
            "no training examples left after encoding",
            hint="run `sft preview` to see why rows were dropped (max_length, on_overflow)",
        )
    world = distributed.num_processes
    t = recipe.training
    train_rows = train_set.dataset().remove_columns(["truncated"])  # memory-mapped, opened once
    batch_plan, bins = plan_batches(
        sequence_lengths(train_rows),
        t.batch_size,
        t.gradient_accumulation_steps,
        layout(recipe),
        recipe.max_length,
        t.seed,
    )
    per_step = t.batch_size * t.gradient_accumulation_steps * world
    steps = t.max_steps or max(1, int(-(-batch_plan.items // per_step) * t.epochs))
    plan = Plan(
        run_dir=run_dir,
        device=device,
        precision=precision,
        world_size=world,
        train_examples=train_set.stats.examples,
        eval_examples=eval_set.stats.examples if eval_set else 0,
        train_tokens=train_set.stats.total_tokens,
        trained_tokens=train_set.stats.trained_tokens,
        steps=steps,
        dropped=train_set.stats.dropped,
        truncated=train_set.stats.truncated,
        resume_from=resume_from,
        prepared={
            split: {"fingerprint": p.fingerprint, "cached": p.cached, "folder": str(p.folder)}
            for split, p in prepared.items()
        },
        batching=batch_plan.__dict__,
    )
    # fp16 mixed precision keeps fp32 master weights; bf16 trains in bf16
    model = load_model(recipe.model, torch.bfloat16 if precision == "bf16" else torch.float32, quant, len(tokenizer))
    loaded_attention = model.config._attn_implementation
    plan.attention = use_sequence_attention(model) if t.padding_free else loaded_attention
    plan.new_tokens = extra_special_tokens(recipe.template)
    if recipe.lora:
        model = lora_model(model, recipe, tokenizer.convert_tokens_to_ids(plan.new_tokens))
    plan.trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan.total_parameters = sum(p.numel() for p in model.parameters())
    session = Session(
        loaded,
        plan,
        tokenizer,
        is_main=distributed.is_main_process,
        overwrite=overwrite,
        reporter=reporter,
        temporary=temporary,
        loaded_attention=loaded_attention,
    )
    if dry_run:
        session.discard_temporary()
        return session

    from transformers import PrinterCallback

    from sft_cli.trainer import SftTrainer

    session.state = {"stop_at_step": stop_at_step}
    session.collator = Collator(tokenizer.pad_token_id, padding_free=t.padding_free, source=train_rows)
    session.trainer = SftTrainer(
        model=model,
        fused_loss=not no_gpu(),
        args=sft_config(recipe, run_dir, precision, eval_set is not None, t.padding_free),
        train_dataset=bins_dataset(bins) if bins is not None else train_rows,
        eval_dataset=eval_set.dataset().remove_columns(["truncated"]) if eval_set else None,
        processing_class=tokenizer,
        data_collator=session.collator,
        callbacks=make_callbacks(recipe, run_dir, reporter, session.is_main, session.state),
    )
    session.trainer.remove_callback(PrinterCallback)  # our progress view replaces the raw log dicts
    return session


def run(session: Session, argv: list[str] | None = None) -> RunResult:
    """Train a prepared session, then save everything (rank 0 only)."""
    plan, trainer, loaded = session.plan, session.trainer, session.loaded
    run_dir = plan.run_dir
    reporter = session.reporter
    if session.is_main:
        if run_dir.exists() and session.overwrite and not plan.resume_from:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        reporter.note(
            f"run folder {run_dir} | {plan.device} | {plan.precision} | {plan.train_examples} examples | "
            f"{plan.steps} steps | {plan.trainable_parameters:,} trainable parameters"
        )
    distributed_state().wait_for_everyone()
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=plan.resume_from)
    wall = time.perf_counter() - started
    rows_by_rank = distributed_rows(session.collator.first_rows)
    prepared_by_rank = gathered({split: "cache" if p["cached"] else "encoded" for split, p in plan.prepared.items()})

    if session.state.get("interrupted"):
        stop_reason = "interrupted"
    elif trainer.state.global_step < trainer.state.max_steps:
        stop_reason = "early_stopping"
    else:
        stop_reason = "completed"
    result = RunResult(run_dir, plan, stop_reason)
    if stop_reason == "interrupted":
        command = " ".join(argv or ["sft", "train", str(loaded.path)])
        if "--resume" not in command:
            command += f" --resume --set output.dir={run_dir}"
        result.resume_command = command
    restore_attention(trainer.model, session.loaded_attention)
    if session.is_main:
        finish(
            trainer,
            session.tokenizer,
            loaded,
            result,
            wall,
            session.state,
            {"first_batch_rows_by_rank": rows_by_rank, "prepared_by_rank": prepared_by_rank},
        )
    distributed_state().wait_for_everyone()
    session.discard_temporary()
    return result


def train(loaded: LoadedRecipe, *, argv: list[str] | None = None, **options) -> RunResult:
    """Run a recipe end to end (options as for `prepare`)."""
    session = prepare(loaded, **options)
    if options.get("dry_run"):
        return RunResult(session.plan.run_dir, session.plan, "dry_run")
    return run(session, argv)


def distributed_rows(first_rows: list[int] | None) -> list[list[int]]:
    """Each process's first-batch rows, gathered (a list of one when not distributed)."""
    return gathered(first_rows or [])


def gathered(value) -> list:
    """`value` from every process, in rank order (a list of one when not distributed)."""
    from accelerate.utils import gather_object

    return gather_object([value])
