"""Trainer callbacks: metrics.jsonl, the trackers and the progress view, Ctrl-C as save-and-stop, early stopping."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sft_cli.progress import Progress
from sft_cli.recipe.schema import Recipe
from sft_cli.runs.record import METRICS_FILE
from sft_cli.training.trackers import Trackers


@dataclass
class RunState:
    """What the callbacks learn while a run trains, read by the run when it ends."""

    stop_at_step: int | None = None  # tests deliver a real Ctrl-C at this step
    interrupted: bool = False
    train_seconds: float = 0.0
    tokens_seen: int = 0
    last_eval: dict = field(default_factory=dict)  # the last evaluation's losses (overall and per source)
    # undoes what training set in this process (Ctrl-C handler, CPU heap policy); also after an exception
    restore_process: Callable[[], None] = lambda: None


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
            self.previous: signal.Handlers | None = None
            self.heap: CpuHeap | None = None

        def on_train_begin(self, args, st, control, **kwargs):
            self.start_time = time.perf_counter()
            self.heap = CpuHeap.start(forecast_bytes) if no_gpu() else None  # memory.py
            self.start_tokens = st.num_input_tokens_seen
            self.previous = signal.signal(signal.SIGINT, self._interrupt)
            state.restore_process = self.restore_process
            if is_main:
                progress.start("train", st.max_steps)

        def _interrupt(self, signum, frame):
            if state.interrupted:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            state.interrupted = True
            if is_main:
                progress.note("interrupt: saving a checkpoint at the end of this step (Ctrl-C again to abort)")

        def on_step_end(self, args, st, control, **kwargs):
            if self.heap is not None:
                self.heap.after_step()
            if state.stop_at_step == st.global_step:
                os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C were pressed during this step
            if state.interrupted:
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, st, control, logs=None, **kwargs):
            if not is_main or not logs:
                return
            elapsed = time.perf_counter() - self.start_time
            tokens = st.num_input_tokens_seen - self.start_tokens
            record = {"step": st.global_step, "epoch": round(st.epoch or 0, 4), **logs}
            if "loss" in logs:
                record["tokens_per_s"] = round(tokens / elapsed, 1) if elapsed > 0 else None
            with (run_dir / METRICS_FILE).open("a") as f:
                f.write(json.dumps(record) + "\n")
            losses = {k: v for k, v in logs.items() if k.startswith("eval_") and k.endswith("_loss")}
            if losses:
                state.last_eval = losses
            if trackers is not None:
                trackers.log(record)
            progress.update(st.global_step, record)

        def restore_process(self):
            """The Ctrl-C handler and glibc's thresholds as they were before training (once)."""
            if self.previous is not None:
                signal.signal(signal.SIGINT, self.previous)
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
