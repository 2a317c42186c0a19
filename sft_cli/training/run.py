"""`sft train`: recipe -> encoded dataset -> TRL SFTTrainer (+PEFT, +Accelerate) -> a complete run folder.

Read top to bottom, torchtune's way: `setup_session` runs the named setup stages (run folder, data, model,
trainer; stages.py), each returning one object, so everything that can fail fails before the first step; `run`
trains and saves. Batches come from `batching.py` (padding-free by default) with the attention of `attention.py`.
The dataset handed to TRL is the output of `encode_rows`, the function `sft preview` shows; TRL is told to skip its
own preparation, so it neither re-tokenizes nor re-masks.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_cli.encoding.loading import load_model_skeleton
from sft_cli.progress import Progress
from sft_cli.recipe.schema import LoadedRecipe, Recipe
from sft_cli.recipe.trainer_fields import check_trainer_args
from sft_cli.runs.folder import (
    RunLock,
    clear_for_overwrite,
    disk_full,
    save_final_model,
    trim_metrics,
    write_run_files,
    write_started_recipe,
)
from sft_cli.runs.record import RunRecord
from sft_cli.training.attention import use_attention
from sft_cli.training.callbacks import RunState, diverged_error
from sft_cli.training.environment import detect
from sft_cli.training.gather import full_state_dict
from sft_cli.training.memory import MB, measured_peak
from sft_cli.training.plan import Plan, make_plan
from sft_cli.training.setup import (
    checkpoint_step,
    compile_counts,
    distributed_state,
    gathered,
    sft_config,
    trainer_arg_names,
)
from sft_cli.training.stages import (
    TrainingData,
    TrainingModel,
    generation_eval,
    setup_data,
    setup_model,
    setup_run_folder,
    setup_trainer,
)
from sft_cli.training.trackers import Trackers, check_trackers


@dataclass
class RunResult:
    run_dir: Path
    plan: Plan
    stop_reason: str
    resume_command: str | None = None
    exit_code: int = 0  # an interrupted run: 128 + the signal (130 Ctrl-C, 143 SIGTERM)
    kept: str | None = None  # with early stopping: which checkpoint's weights the run kept, and its score


@dataclass
class Session:
    """A prepared run: everything loaded and checked, the trainer built, nothing trained yet."""

    loaded: LoadedRecipe
    plan: Plan
    data: TrainingData
    model: TrainingModel
    trainer: Any = None
    collator: Any = None
    state: RunState = field(default_factory=RunState)
    is_main: bool = True
    overwrite: bool = False
    progress: Progress = field(default_factory=Progress)
    lock: RunLock | None = None  # the main process's hold on the run folder
    trackers: Trackers | None = None  # the main process's experiment trackers

    @property
    def tokenizer(self):
        return self.data.tokenizer

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def discard_temporary(self) -> None:
        if self.data.temporary and self.is_main:
            shutil.rmtree(self.data.temporary, ignore_errors=True)


def setup_session(
    loaded: LoadedRecipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    stop_at_step: int | None = None,
    no_cache: bool = False,
) -> Session:
    """Run the setup stages: everything that can fail fails here, before the first step; the trainer is built
    unless dry_run. `stop_at_step` delivers a real Ctrl-C at that step (tests of interrupt and resume use it)."""
    progress = progress or Progress()
    recipe = loaded.recipe
    check_trainer_args(recipe.trainer_args, trainer_arg_names(), str(loaded.path))
    check_trackers(recipe.training.report_to, str(loaded.path))
    distributed = distributed_state()
    run_folder, lock = setup_run_folder(loaded, distributed, resume, overwrite)
    try:
        return _setup(loaded, run_folder, lock, distributed, overwrite, dry_run, progress, stop_at_step, no_cache)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _setup(loaded, run_folder, lock, distributed, overwrite, dry_run, progress, stop_at_step, no_cache) -> Session:
    """The stages after the run folder is held (see `setup_session`)."""
    recipe = loaded.recipe
    env = detect(recipe, lambda: load_model_skeleton(recipe.model))  # what this hardware cannot run fails here
    if env.is_main:
        for note in env.notes:
            progress.note(f"note: {note}")
    data = setup_data(recipe, distributed, no_cache, progress)
    # before the model loads: under DeepSpeed ZeRO-3 the arguments set up `zero.Init`, so that each rank loads only
    # its partition of the weights rather than a whole copy
    args = sft_config(recipe, run_folder.path, env, data.eval_rows is not None)
    model = setup_model(recipe, env, data.tokenizer)
    plan = make_plan(recipe, run_folder, env, data.mix, data.batch_plan, data.lengths, model.model, model.runtime)
    generation = generation_eval(recipe, data, model, plan)
    if plan.memory_warning and distributed.is_main_process:
        progress.note(f"warning: {plan.memory_warning}")
    session = Session(
        loaded,
        plan,
        data,
        model,
        state=RunState(stop_at_step=stop_at_step),
        is_main=distributed.is_main_process,
        overwrite=overwrite,
        progress=progress,
        lock=lock,
    )
    if dry_run:
        session.discard_temporary()
        session.release()
        return session
    if session.is_main:
        session.trackers = Trackers(
            recipe.training.report_to,
            run_folder.path,
            recipe.training.tracker_project or loaded.name,
            checkpoint_step(run_folder.resume_from),
        )
    session.trainer = setup_trainer(
        recipe, args, plan, data, model, session.state, progress, session.trackers, generation
    )
    session.collator = session.trainer.data_collator
    return session


# --- the run ---------------------------------------------------------------------------------------------


def run(session: Session, argv: list[str] | None = None) -> RunResult:
    """Train a prepared session, then save everything (rank 0 only); the run folder's lock is released at the
    end, however the run ends."""
    try:
        return _run(session, argv)
    except BaseException as error:
        if session.trackers is not None:
            session.trackers.fail()
        full = disk_full(session.plan.run_dir, error) if isinstance(error, (OSError, RuntimeError)) else None
        if full is None:  # torch reports a full disk as a RuntimeError of its zip writer
            raise
        raise full from None
    finally:
        session.release()


def _run(session: Session, argv: list[str] | None) -> RunResult:
    plan, trainer, loaded = session.plan, session.trainer, session.loaded
    run_dir = plan.run_dir
    if session.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if session.overwrite and not plan.resume_from:
            clear_for_overwrite(run_dir)
        if not plan.resume_from:
            write_started_recipe(run_dir, loaded.recipe)
        if plan.resume_from:
            trim_metrics(run_dir, plan.resume_from)
        session.progress.note(
            f"run folder {run_dir} | {plan.environment.summary()} | {plan.train_examples} "
            f"examples | {plan.steps} steps | {plan.trainable_parameters:,} trainable parameters"
        )
    if session.trackers is not None:
        session.trackers.start(loaded.recipe.model_dump(mode="json"), plan.as_dict())
    distributed_state().wait_for_everyone()
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=plan.resume_from)
    finally:  # a run ending in an exception skips on_train_end
        session.state.restore_process()
    wall = time.perf_counter() - started
    rows_by_rank = gathered(session.collator.first_rows or [])
    prepared_by_rank = gathered({split: "cache" if p["cached"] else "encoded" for split, p in plan.prepared.items()})

    if session.state.diverged:
        stop_reason = "diverged"
    elif session.state.interrupted:
        stop_reason = "interrupted"
    elif trainer.state.global_step < trainer.state.max_steps:
        stop_reason = "early_stopping"
    else:
        stop_reason = "completed"
    result = RunResult(run_dir, plan, stop_reason, kept=kept_checkpoint(loaded.recipe, trainer.state))
    if stop_reason == "interrupted":
        command = " ".join(argv or ["sft", "train", str(loaded.path)])
        if "--resume" not in command:
            command += f" --resume --set output.dir={run_dir}"
        result.resume_command = command
        result.exit_code = 128 + session.state.signal_number
    use_attention(trainer.model, session.model.loaded_attention)
    keep_model = stop_reason not in ("interrupted", "diverged")
    # every rank takes part: under FSDP2 and ZeRO-3 the weights are gathered from all of them
    weights = full_state_dict(trainer.model, trainer.accelerator, trainer.model_wrapped) if keep_model else None
    if session.is_main:
        if keep_model:
            record = run_record(loaded.recipe, session.data)
            save_final_model(run_dir, trainer.model, session.tokenizer, record, weights)
        facts = run_facts(session, result, wall, rows_by_rank, prepared_by_rank)
        write_run_files(run_dir, loaded.recipe, facts)
        if session.trackers is not None:
            session.trackers.finish(facts)
    distributed_state().wait_for_everyone()
    session.discard_temporary()
    if stop_reason == "diverged":
        raise diverged_error(session.state, run_dir, loaded.recipe.learning_rate, session.is_main)
    return result


def train(loaded: LoadedRecipe, *, argv: list[str] | None = None, **options) -> RunResult:
    """Run a recipe end to end (options as for `setup_session`)."""
    session = setup_session(loaded, **options)
    if options.get("dry_run"):
        return RunResult(session.plan.run_dir, session.plan, "dry_run")
    return run(session, argv)


def kept_checkpoint(recipe: Recipe, state) -> str | None:
    """`step 140, eval_exact_match 0.5417`: the best evaluation, whose weights early stopping loads at the end."""
    early = recipe.training.early_stopping
    if not early or state.best_model_checkpoint is None or state.best_metric is None:
        return None
    step = state.best_model_checkpoint.rsplit("-", 1)[-1]
    return f"step {step}, {early.metric} {state.best_metric:.4f}"


def run_record(recipe: Recipe, data: TrainingData) -> RunRecord:
    """The contract the model was trained under, with the stop tokens it learned to end on."""
    quantized = "nf4" if recipe.lora and recipe.lora.load_in_4bit else None
    return RunRecord(recipe.encoding, data.options.stop_tokens, recipe.model, bool(recipe.lora), None, quantized)


def run_facts(session: Session, result: RunResult, wall: float, rows_by_rank: list, prepared_by_rank: list) -> dict:
    """What run.json says of a run besides its recipe and versions."""
    state, trainer = session.state, session.trainer
    seconds = state.train_seconds or wall
    return {
        "stop_reason": result.stop_reason,
        "plan": result.plan.as_dict(),
        "global_step": trainer.state.global_step,
        "best_metric": trainer.state.best_metric,
        "eval": state.last_eval,
        "wall_seconds": round(wall, 2),
        "tokens_seen": state.tokens_seen,
        "tokens_per_s": round(state.tokens_seen / seconds, 1) if seconds else None,
        "first_batch_rows_by_rank": rows_by_rank,
        "prepared_by_rank": prepared_by_rank,
        "resume_command": result.resume_command,
        "memory": {"forecast_mb": round(result.plan.memory.total / MB), **measured_peak()},
        "compile": compile_counts() if session.loaded.recipe.training.compile else None,
        "eval_generate_seconds": round(state.generate_seconds, 2) if result.plan.eval_generate else None,
    }
