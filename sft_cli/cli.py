"""The `sft` command line. Each command parses, calls one library function and renders the result.

This is the only module that prints. Heavy libraries (torch, transformers) are imported inside command
bodies so that `sft --help` and `sft validate` stay fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from sft_cli.errors import SftError

app = typer.Typer(
    help="Supervised fine-tuning (instruction tuning) from one YAML recipe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

RecipeArg = typer.Argument(..., help="The recipe YAML file.", show_default=False)
SetOpt = typer.Option(None, "--set", help="Override a recipe key: --set training.learning_rate=1e-4 (repeatable).")


def fail(error: SftError) -> None:
    err.print(f"[bold red]error:[/] {error.message}", highlight=False, markup=True, soft_wrap=True)
    if error.hint:
        err.print(f"[yellow]hint:[/] {error.hint}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def command(fn):
    """Register a command whose user mistakes (SftError) print as error/hint and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SftError as error:
            fail(error)

    return app.command()(wrapper)


def _load(recipe_path: Path, overrides: Optional[list[str]]):
    from sft_cli.recipe import load_recipe

    return load_recipe(recipe_path, overrides or [])


@command
def init(
    output: Path = typer.Option(Path("recipe.yaml"), "--output", "-o", help="Where to write the recipe."),
    template: str = typer.Option("alpaca", help="alpaca | human_assistant | special_tokens | chat"),
    force: bool = typer.Option(False, help="Replace an existing recipe file."),
) -> None:
    """Write a commented starter recipe (and a tiny example dataset beside it if none is there)."""
    from sft_cli.starter import write_starter

    for path in write_starter(output, template, force):
        out.print(f"wrote {path}")
    out.print(f"next: sft validate {output} && sft preview {output}")


@command
def validate(recipe: Path = RecipeArg, set_: Optional[list[str]] = SetOpt) -> None:
    """Check a recipe without loading any model: every problem at once, with its key and line."""
    loaded = _load(recipe, set_)
    out.print(f"[green]✓[/] {recipe} is valid: {loaded.recipe.summary()}", highlight=False, soft_wrap=True)


@command
def preview(
    recipe: Path = RecipeArg,
    set_: Optional[list[str]] = SetOpt,
    limit: int = typer.Option(3, "--limit", "-n", min=0, help="How many examples to show."),
    index: Optional[int] = typer.Option(None, "--index", "-i", help="Show only this row (numbered from 1)."),
    split: str = typer.Option("train", help="train | eval"),
    ids: bool = typer.Option(False, "--ids", help="Show each token's id."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout (examples, stats, warnings)."),
) -> None:
    """Show, token by token, what the model will be trained on, and dataset-wide counts and warnings."""
    from sft_cli.preview import build_preview

    if split not in ("train", "eval"):
        raise SftError(f"--split: expected train or eval, got {split!r}")
    loaded = _load(recipe, set_)
    result = build_preview(loaded.recipe, split=split, limit=limit, index=index)
    if as_json:
        sys.stdout.write(json.dumps(result.as_json(), ensure_ascii=False) + "\n")
        return
    from sft_cli.render import render_preview

    render_preview(out, result, show_ids=ids)


class ProgressReporter:
    """One rich progress bar: step, loss, learning rate, tokens/s and ETA; eval results as lines above it."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = None
        self.task = None

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True)

    def start(self, total_steps: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[metrics]}"),
            TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task = self.progress.add_task("train", total=total_steps, metrics="")
        self.progress.start()

    def update(self, step: int, metrics: dict) -> None:
        if self.progress is None:
            return
        if "eval_loss" in metrics:
            self.progress.console.print(f"step {step}: eval loss {metrics['eval_loss']:.4f}", highlight=False)
        shown = ""
        if "loss" in metrics:
            shown = f"loss {metrics['loss']:.4f} | lr {metrics.get('learning_rate', 0):.2e}"
            if metrics.get("tokens_per_s"):
                shown += f" | {metrics['tokens_per_s']:,.0f} tok/s"
        self.progress.update(self.task, completed=step, **({"metrics": shown} if shown else {}))

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def quiet_libraries() -> None:
    """Silence the transformers/TRL/datasets log flood (shown again with --verbose)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def launch_processes(num_processes: int, accelerate_config: Optional[Path]) -> None:
    """Re-run this very command in N processes: `accelerate launch` on GPUs or with a config file (DDP, FSDP,
    DeepSpeed), torchrun on CPU (gloo), where accelerate's own CPU launcher needs MPI."""
    import subprocess

    import torch

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith(("--num-processes=", "--accelerate-config=")):
            skip = False
            continue
        if arg in ("--num-processes", "--accelerate-config"):
            skip = True
            continue
        args.append(arg)
    if accelerate_config or torch.cuda.is_available():
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
        command += ["--config_file", str(accelerate_config)] if accelerate_config else ["--multi_gpu"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes)]
    raise typer.Exit(subprocess.call([*command, "-m", "sft_cli", *args]))


@command
def train(
    recipe: Path = RecipeArg,
    set_: Optional[list[str]] = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in output.dir (or the latest run of this "
                                "recipe) from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Load and encode everything, print the plan, train nothing."),
    num_processes: int = typer.Option(1, "--num-processes", min=1, help="Start N processes via accelerate launch."),
    accelerate_config: Optional[Path] = typer.Option(
        None, "--accelerate-config", help="accelerate config file (e.g. configs/accelerate/fsdp.yaml)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the transformers/TRL logs."),
) -> None:
    """Fine-tune with TRL's SFTTrainer on exactly the tokens `sft preview` shows."""
    loaded = _load(recipe, set_)  # a bad recipe fails here, before any model loads
    if num_processes > 1 or accelerate_config:
        launch_processes(num_processes, accelerate_config)
    if not verbose:
        quiet_libraries()
    from sft_cli.train import distributed_state
    from sft_cli.train import train as run_training

    is_main = distributed_state().is_main_process
    console = out if is_main else Console(file=open(os.devnull, "w"))
    result = run_training(loaded, resume=resume, overwrite=overwrite, dry_run=dry_run,
                          reporter=ProgressReporter(console), argv=["sft", *sys.argv[1:]])
    if not is_main:
        return
    if dry_run:
        from sft_cli.render import render_plan

        render_plan(out, result.plan)
        return
    if result.stop_reason == "interrupted":
        err.print(f"interrupted: checkpoint saved in {result.run_dir}\nresume with: {result.resume_command}")
        raise typer.Exit(130)
    out.print(f"[green]✓[/] {result.stop_reason}: model, tokenizer, metrics and run.json in {result.run_dir}",
              highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
