"""The run folder: where a run goes (never over an earlier one silently), its checkpoints, and what it leaves
behind (final model saved atomically, template, resolved recipe, metrics, plot, run.json)."""

from __future__ import annotations

import json
import os
import platform
import shutil
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sft_cli.errors import SftError
from sft_cli.generate import TEMPLATE_FILE
from sft_cli.recipe import LoadedRecipe, Recipe

RUN_FILE, METRICS_FILE, PLOT_FILE = "run.json", "metrics.jsonl", "loss.png"
RECIPE_FILE, CHECKPOINTS = "recipe.yaml", "checkpoints"

if TYPE_CHECKING:
    from sft_cli.train import RunResult


def default_run_dir(loaded: LoadedRecipe) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{loaded.name}-{stamp}"


def latest_run_dir(loaded: LoadedRecipe) -> Path | None:
    runs = sorted(Path("runs").glob(f"{loaded.name}-*")) if Path("runs").is_dir() else []
    return runs[-1] if runs else None


def choose_run_dir(loaded: LoadedRecipe, resume: bool, overwrite: bool) -> tuple[Path, str | None]:
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
        return run_dir, str(checkpoint)
    run_dir = run_dir or default_run_dir(loaded)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise SftError(
                f"{run_dir} already holds a run",
                hint="--resume continues it from its last checkpoint; --overwrite replaces it",
            )
    return run_dir, None


def last_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = sorted((run_dir / CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [c for c in checkpoints if (c / "trainer_state.json").exists()]
    return complete[-1] if complete else None


def finish(trainer, tokenizer, loaded: LoadedRecipe, result: RunResult, wall: float, state: dict, by_rank: dict):
    """Save the final model atomically (aside, then moved in), the template, recipe, plot and run.json."""
    run_dir, recipe = result.run_dir, loaded.recipe
    if result.stop_reason != "interrupted":
        aside = run_dir / ".final.partial"
        shutil.rmtree(aside, ignore_errors=True)
        trainer.model.save_pretrained(aside)
        tokenizer.save_pretrained(aside)
        save_template(aside, recipe, tokenizer)
        for item in aside.iterdir():
            target = run_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        aside.rmdir()
    (run_dir / RECIPE_FILE).write_text(resolved_recipe_yaml(recipe), encoding="utf-8")
    plot_losses(run_dir / METRICS_FILE, run_dir / PLOT_FILE)
    seconds = state.get("train_seconds") or wall
    tokens = state.get("tokens_seen", 0)
    record = {
        "stop_reason": result.stop_reason,
        "plan": result.plan.as_dict(),
        "global_step": trainer.state.global_step,
        "best_metric": trainer.state.best_metric,
        "wall_seconds": round(wall, 2),
        "tokens_seen": tokens,
        "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        **by_rank,
        "resume_command": result.resume_command,
        "versions": versions(),
        "recipe": recipe.model_dump(mode="json"),
    }
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")


def save_template(folder: Path, recipe: Recipe, tokenizer) -> None:
    """The template, masking and chat choices and the stop tokens, so generation renders prompts exactly as
    training did and stops where training taught it to."""
    from sft_cli.tokens import stop_tokens

    template = recipe.template if isinstance(recipe.template, str) else recipe.template.model_dump()
    data = {
        "template": template,
        "loss": recipe.loss,
        "loss_turns": recipe.loss_turns,
        "max_length": recipe.max_length,
        "chat": recipe.chat.model_dump(),
        "special_tokens_in_text": recipe.special_tokens_in_text,
        "stop_tokens": list(stop_tokens(tokenizer)),
        "base_model": recipe.model.model_dump(),
        "lora": bool(recipe.lora),
    }
    (folder / TEMPLATE_FILE).write_text(json.dumps(data, indent=2), encoding="utf-8")


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
