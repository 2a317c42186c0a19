"""Trainer callbacks: metrics.jsonl, the trackers and the progress view, Ctrl-C as save-and-stop, early stopping."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sft_cli.errors import SftError
from sft_cli.progress import Progress
from sft_cli.recipe.schema import Recipe
from sft_cli.runs.folder import last_checkpoint
from sft_cli.runs.record import CHECKPOINTS, METRICS_FILE
from sft_cli.training.trackers import Trackers

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class RunState:
    """What the callbacks learn while a run trains, read by the run when it ends."""

    stop_at_step: int | None = None  # tests deliver a real Ctrl-C at this step
    interrupted: bool = False
    signal_number: int = signal.SIGINT  # the signal that interrupted the run (Ctrl-C, or SIGTERM from a scheduler)
    diverged: dict | None = None  # the first logged step whose loss or gradient norm was not finite
    last_finite_step: int = 0  # the last logged step whose loss and gradient norm were finite
    train_seconds: float = 0.0
    tokens_seen: int = 0
    last_eval: dict = field(default_factory=dict)  # the last evaluation's losses (overall and per source)
    generate_seconds: float = 0.0  # spent generating at evaluations (training.eval_generate), all sources
    # undoes what training set in this process (Ctrl-C handler, CPU heap policy); also after an exception
    restore_process: Callable[[], None] = lambda: None


def diverged_error(state: RunState, run_dir: Path, learning_rate: float, is_main: bool) -> SftError:
    """A run whose loss or gradient went non-finite ends here, with no final model; checkpoints written after the
    last finite step may hold non-finite weights and are removed, so none of them is ever resumed."""
    bad, last = state.diverged or {}, state.last_finite_step
    if is_main:
        for checkpoint in (run_dir / CHECKPOINTS).glob("checkpoint-*"):
            if int(checkpoint.name.split("-")[-1]) > last:
                shutil.rmtree(checkpoint, ignore_errors=True)
    kept = last_checkpoint(run_dir)
    values = ", ".join(f"{key} {value}" for key, value in bad.items() if key != "step")
    return SftError(
        f"training diverged at step {bad.get('step')}: {values}; no final model was saved"
        + (f" (the last finite checkpoint, {kept.name}, is kept)" if kept else ""),
        hint=f"lower training.learning_rate (this run: {learning_rate:g}) or look for extreme rows in the data; "
        "then train afresh with --overwrite",
    )


def agree_on_interrupt(state: RunState, device) -> None:
    """Every rank stops at the same step when any one was signalled (a signal may reach some ranks only, or
    between two of their steps): each step the ranks share the signal they received, if any."""
    import torch
    import torch.distributed as dist

    received = torch.tensor([state.signal_number if state.interrupted else 0], device=device)
    dist.all_reduce(received, op=dist.ReduceOp.MAX)
    if received.item() and not state.interrupted:
        state.interrupted, state.signal_number = True, int(received.item())


def make_callbacks(
    recipe: Recipe,
    run_dir: Path,
    progress: Progress,
    is_main: bool,
    state: RunState,
    trackers: Trackers | None,
    forecast_bytes: int,
):
    """The run's callbacks: the monitor below, and early stopping when the recipe asks for it. `trackers`: the
    main process's experiment trackers, started by the run before the first step; `forecast_bytes`: the memory
    forecast's peak, above which a CPU run gives freed memory back to the system."""
    from transformers import EarlyStoppingCallback, TrainerCallback

    from sft_cli.training.memory import CpuHeap
    from sft_cli.training.setup import no_gpu

    class Monitor(TrainerCallback):
        """Writes metrics.jsonl, feeds the trackers, drives the progress view, and turns Ctrl-C into
        save-and-stop."""

        def __init__(self):
            self.start_time = time.perf_counter()
            self.previous: dict | None = None
            self.heap: CpuHeap | None = None

        def on_train_begin(self, args, st, control, **kwargs):
            self.start_time = time.perf_counter()
            self.heap = CpuHeap.start(forecast_bytes) if no_gpu() else None  # memory.py
            self.start_tokens = st.num_input_tokens_seen
            # SIGTERM (SLURM, Kubernetes, docker stop) acts as Ctrl-C: a checkpoint, then a clean stop
            self.previous = {sig: signal.signal(sig, self._interrupt) for sig in STOP_SIGNALS}
            state.restore_process = self.restore_process
            if is_main:
                progress.start("train", st.max_steps)

        def _interrupt(self, signum, frame):
            if state.interrupted:
                if signum == signal.SIGINT and state.signal_number == signal.SIGINT:  # Ctrl-C again: stop now
                    raise KeyboardInterrupt
                return  # a scheduler's SIGTERM may come twice (to the job and through sft's launcher)
            state.interrupted, state.signal_number = True, signum
            if is_main:
                name = "interrupt" if signum == signal.SIGINT else signal.Signals(signum).name
                progress.note(f"{name}: saving a checkpoint at the end of this step (Ctrl-C again to abort)")

        def on_step_end(self, args, st, control, **kwargs):
            if self.heap is not None:
                self.heap.after_step()
            if state.stop_at_step == st.global_step:
                os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C were pressed during this step
            if args.world_size > 1:
                agree_on_interrupt(state, args.device)
            if state.interrupted:
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, st, control, logs=None, **kwargs):
            if not logs:
                return
            bad = {
                k: logs[k]
                for k in ("loss", "grad_norm")
                if isinstance(logs.get(k), float) and not math.isfinite(logs[k])
            }
            if bad and state.diverged is None:
                state.diverged = {"step": st.global_step, **bad}
                control.should_save = False  # never a checkpoint of weights that went non-finite
                control.should_training_stop = True
            elif "loss" in logs and not bad:
                state.last_finite_step = st.global_step
            if not is_main:
                return
            elapsed = time.perf_counter() - self.start_time
            tokens = st.num_input_tokens_seen - self.start_tokens
            record = {"step": st.global_step, "epoch": round(st.epoch or 0, 4), **logs}
            if "loss" in logs:
                record["tokens_per_s"] = round(tokens / elapsed, 1) if elapsed > 0 else None
            with (run_dir / METRICS_FILE).open("a") as f:
                f.write(json.dumps(record) + "\n")
            state.generate_seconds += sum(v for k, v in logs.items() if k.endswith("_generate_seconds"))
            losses = {k: v for k, v in logs.items() if k.startswith("eval_") and k.endswith("_loss")}
            if losses:
                state.last_eval = losses
            if trackers is not None:
                trackers.log(record)
            progress.update(st.global_step, record)

        def restore_process(self):
            """The Ctrl-C handler and glibc's thresholds as they were before training (once)."""
            for sig, handler in (self.previous or {}).items():
                signal.signal(sig, handler)
            if self.heap is not None:
                self.heap.stop()
            self.previous = self.heap = None

        def on_train_end(self, args, st, control, **kwargs):
            self.restore_process()
            state.train_seconds = time.perf_counter() - self.start_time
            state.tokens_seen = st.num_input_tokens_seen - self.start_tokens
            if is_main:
                progress.stop()

    callbacks = [Monitor()]
    early = recipe.training.early_stopping
    if early:
        callbacks.append(EarlyStoppingCallback(early.patience, early.threshold))
    return callbacks
