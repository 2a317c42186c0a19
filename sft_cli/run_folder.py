"""The run folder: where a run goes (never over an earlier one silently), its checkpoints, and what it leaves
behind (final model saved atomically with its run record, resolved recipe, plot, run.json). File names and the
run record's format live in run_record.py."""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sft_cli.errors import SftError
from sft_cli.recipe import LoadedRecipe, Recipe
from sft_cli.run_record import CHECKPOINTS, METRICS_FILE, PLOT_FILE, RECIPE_FILE, RUN_FILE, RunRecord, write_record


@dataclass(frozen=True)
class RunFolder:
    """Where a run writes, and the checkpoint it resumes from (None for a fresh run)."""

    path: Path
    resume_from: str | None = None


def default_run_dir(loaded: LoadedRecipe) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{loaded.name}-{stamp}"


def latest_run_dir(loaded: LoadedRecipe) -> Path | None:
    runs = sorted(Path("runs").glob(f"{loaded.name}-*")) if Path("runs").is_dir() else []
    return runs[-1] if runs else None


def choose_run_dir(loaded: LoadedRecipe, resume: bool, overwrite: bool) -> RunFolder:
    """The run folder and the checkpoint to resume from; an existing run is never replaced silently."""
    recipe = loaded.recipe
    run_dir = Path(recipe.output.dir) if recipe.output.dir else None
    if resume:
        run_dir = run_dir or latest_run_dir(loaded)
        if run_dir is None or not run_dir.is_dir():
            raise SftError(
                f"--resume: no run to resume for {loaded.path.name}",
                hint="set output.dir to the run folder, e.g. --set output.dir=runs/NAME",
            )
        checkpoint = last_checkpoint(run_dir)
        if checkpoint is None:
            raise SftError(f"--resume: {run_dir} has no checkpoint", hint="start afresh with --overwrite")
        return RunFolder(run_dir, str(checkpoint))
    run_dir = run_dir or default_run_dir(loaded)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise SftError(
                f"{run_dir} already holds a run",
                hint="--resume continues it from its last checkpoint; --overwrite replaces it",
            )
    return RunFolder(run_dir)


def last_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = sorted((run_dir / CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [c for c in checkpoints if (c / "trainer_state.json").exists()]
    return complete[-1] if complete else None


def save_final_model(run_dir: Path, model, tokenizer, record: RunRecord) -> None:
    """The trained model, tokenizer and run record, written aside and moved in: a run folder never holds half a
    final model."""
    aside = run_dir / ".final.partial"
    shutil.rmtree(aside, ignore_errors=True)
    model.save_pretrained(aside)
    tokenizer.save_pretrained(aside)
    write_record(aside, record)
    for item in aside.iterdir():
        target = run_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    aside.rmdir()


def write_run_files(run_dir: Path, recipe: Recipe, facts: dict) -> None:
    """The resolved recipe, the loss plot and run.json (the run's facts, the versions and the recipe)."""
    (run_dir / RECIPE_FILE).write_text(resolved_recipe_yaml(recipe), encoding="utf-8")
    plot_losses(run_dir / METRICS_FILE, run_dir / PLOT_FILE)
    record = {**facts, "versions": versions(), "recipe": recipe.model_dump(mode="json")}
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")


def resolved_recipe_yaml(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("sft-cli", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def plot_losses(metrics: Path, target: Path) -> None:
    if not metrics.exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label in ((train, "train loss"), (evals, "eval loss")):
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
