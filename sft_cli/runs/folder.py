"""The run folder: where a run goes (never over an earlier one silently), its checkpoints, and what it leaves
behind (final model saved atomically with its run record, resolved recipe, plot, run.json). File names and the
run record's format live in record.py."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sft_cli.errors import SftError
from sft_cli.folders import build_aside, refuse_foreign, refuse_overlap
from sft_cli.folders import disk_full as disk_is_full
from sft_cli.recipe.schema import EncodingSpec, LoadedRecipe, Recipe
from sft_cli.runs.record import (
    CHECKPOINTS,
    LOCK_FILE,
    METRICS_FILE,
    PLOT_FILE,
    RECIPE_FILE,
    RUN_FILE,
    TEMPLATE_FILE,
    RunRecord,
    read_run_facts,
    read_started_recipe,
    write_record,
)

FULL_BELOW = 64 * 2**20  # bytes free under which a failed write is taken for a full disk


@dataclass(frozen=True)
class RunFolder:
    """Where a run writes, and the checkpoint it resumes from (None for a fresh run)."""

    path: Path
    resume_from: str | None = None


@dataclass(frozen=True)
class RunLock:
    """This process's hold on a run folder (`.lock`: pid, host, since), released when the run ends."""

    path: Path

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()  # a run that failed before writing anything leaves no empty folder
        except OSError:
            pass


def lock_run_folder(run_dir: Path) -> RunLock:
    """Hold the run folder: a second `sft train` into it stops, naming the holder. A lock whose process is gone
    (on this host) is stale and taken over; one from another host is respected (its process cannot be seen)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SftError(
            f"{run_dir}: cannot create the run folder ({error.strerror})", hint="pick an output.dir you can write to"
        ) from None
    path = run_dir / LOCK_FILE
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now().isoformat(timespec="seconds")}
    for _ in range(3):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None:
                raise SftError(
                    f"{run_dir} is in use by another sft run (pid {holder.get('pid')} on {holder.get('host')}, "
                    f"since {holder.get('since')})",
                    hint=f"wait for it to end, or train into another output.dir; if that run is gone, delete {path}",
                ) from None
            path.unlink(missing_ok=True)  # stale
            continue
        except OSError as error:
            raise SftError(
                f"{run_dir}: cannot write in the run folder ({error.strerror})",
                hint="pick an output.dir you can write to",
            ) from None
        with os.fdopen(descriptor, "w") as f:
            json.dump(mine, f)
        return RunLock(path)
    raise SftError(f"{run_dir}: cannot take the run folder's lock ({path})", hint=f"delete {path} if no run uses it")


def _lock_holder(path: Path) -> dict | None:
    """The lock's holder while it lives; None when the lock is stale."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # being written this instant, or left half-written long ago
        young = path.exists() and datetime.now().timestamp() - path.stat().st_mtime < 60
        return {"pid": "?", "host": "?", "since": "just now"} if young else None
    if holder.get("host") != socket.gethostname():
        return holder
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return None
    except (PermissionError, ValueError, KeyError, TypeError):
        return holder
    return holder


def holds_a_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir())


def is_run_folder(folder: Path) -> bool:
    """A folder with sft's own record of a run (a finished or an interrupted one): only these may be replaced."""
    return any((folder / name).exists() for name in (TEMPLATE_FILE, RUN_FILE, METRICS_FILE, CHECKPOINTS, LOCK_FILE))


def recipe_inputs(loaded: LoadedRecipe) -> list[Path]:
    """The local files a run reads (the recipe, its data, a local base model): no run folder may hold them."""
    recipe = loaded.recipe
    named = [recipe.model.name] + [p for s in recipe.data.source_entries() for p in (s.path, s.eval_path) if p]
    return [loaded.path, *(Path(p) for p in named if Path(p).exists())]


def clear_for_overwrite(run_dir: Path) -> None:
    """Empty a run folder that --overwrite replaces, keeping this process's lock."""
    for item in run_dir.iterdir():
        if item.name == LOCK_FILE:
            continue
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()


def disk_full(run_dir: Path, error: Exception) -> SftError | None:
    """The error to show when a write failed because the run folder's disk is full (None: it is not full): the
    folder, the space free, and what one checkpoint takes."""
    free = shutil.disk_usage(run_dir).free if run_dir.exists() else None
    full = disk_is_full(error)
    if not full and (free is None or free >= FULL_BELOW):
        return None
    checkpoint = last_checkpoint(run_dir)
    size = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file()) if checkpoint else 0
    needs = f"; one checkpoint takes {size / 2**20:.1f} MB" if size else ""
    return SftError(
        f"{run_dir}: no space left on the device while saving ({(free or 0) / 2**20:.1f} MB free{needs})",
        hint="free some space, then --resume continues from the last complete checkpoint"
        + (f" ({checkpoint.name})" if checkpoint else ""),
    )


def trim_metrics(run_dir: Path, checkpoint: str) -> int:
    """On resume, drop what a killed run logged after its last checkpoint: the resumed run logs those steps
    again. A line cut off mid-write goes too. Returns the lines dropped."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return 0
    step = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            keep = json.loads(line).get("step", 0) <= step
        except ValueError:
            keep = False
        if keep:
            kept.append(line)
        elif line.strip():
            dropped += 1
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(partial, path)
    return dropped


def default_run_dir(loaded: LoadedRecipe) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{loaded.name}-{stamp}"


def latest_run_dir(loaded: LoadedRecipe) -> Path | None:
    """The newest default run folder of this recipe: `runs/NAME-YYYYMMDD-HHMMSS`, never another recipe's whose name
    starts the same (`qwen` is not `qwen-lr3`)."""
    pattern = re.compile(re.escape(loaded.name) + r"-\d{8}-\d{6}")
    runs = sorted(p for p in Path("runs").glob(f"{loaded.name}-*") if pattern.fullmatch(p.name))
    return runs[-1] if runs else None


def choose_run_dir(loaded: LoadedRecipe, resume: bool, overwrite: bool) -> tuple[RunFolder, RunLock]:
    """The run folder, held for this process, and the checkpoint to resume from; an existing run is never
    replaced silently, and a folder another run holds is refused."""
    recipe = loaded.recipe
    run_dir = Path(recipe.output.dir) if recipe.output.dir else None
    if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
        raise SftError(f"output.dir: {run_dir} is a file, not a folder", hint="point output.dir at a folder")
    if resume:
        run_dir = run_dir or latest_run_dir(loaded)
        if run_dir is None or not run_dir.is_dir():
            raise SftError(
                f"--resume: no run to resume for {loaded.path.name}",
                hint="set output.dir to the run folder, e.g. --set output.dir=runs/NAME",
            )
    run_dir = run_dir or default_run_dir(loaded)
    if not resume:
        refuse_overlap(run_dir, recipe_inputs(loaded), "output.dir")
        if holds_a_run(run_dir) and not is_run_folder(run_dir):
            refuse_foreign(run_dir, "output.dir", "a run folder")
    lock = lock_run_folder(run_dir)
    try:
        if resume:
            checkpoint = last_checkpoint(run_dir)
            if checkpoint is None:
                raise SftError(f"--resume: {run_dir} has no checkpoint", hint="start afresh with --overwrite")
            refuse_finished(run_dir, recipe)
            changed = changed_since(run_dir, recipe)
            if changed:
                raise SftError(
                    f"--resume: the recipe changed since {run_dir} started ({'; '.join(changed)})",
                    hint="resume with the recipe as it was, or train afresh (--overwrite, or another output.dir)",
                )
            return RunFolder(run_dir, str(checkpoint)), lock
        if holds_a_run(run_dir) and not overwrite:
            raise SftError(
                f"{run_dir} already holds a run",
                hint="--resume continues it from its last checkpoint; --overwrite replaces it",
            )
    except BaseException:
        lock.release()
        raise
    return RunFolder(run_dir), lock


# besides the encoding contract, what a checkpoint's weights were trained as: resuming under another would mix two runs
TRAINED_AS = ("model", "lora")


def changed_since(run_dir: Path, recipe: Recipe) -> list[str]:
    """The contract keys (and model, LoRA) whose value differs from the recipe the run started with, as
    `key: before -> now`. Training knobs (steps, learning rate, ...) may change on resume."""
    before = read_started_recipe(run_dir)
    if before is None:
        return []
    now = recipe.model_dump(mode="json")
    shown = lambda value: json.dumps(value)[:60]  # noqa: E731
    keys = [*EncodingSpec.model_fields, *TRAINED_AS]
    return [f"{k}: {shown(before.get(k))} -> {shown(now.get(k))}" for k in keys if before.get(k) != now.get(k)]


def refuse_finished(run_dir: Path, recipe: Recipe) -> None:
    """A finished run resumes only toward more steps than it trained; otherwise --resume would train past its end
    and rewrite its facts."""
    facts = read_run_facts(run_dir)
    if facts is None:
        return
    step, reason = facts.get("global_step") or 0, facts.get("stop_reason")
    if reason in ("completed", "early_stopping") and (recipe.training.max_steps or 0) <= step:
        raise SftError(
            f"--resume: {run_dir} already finished ({reason} at step {step})",
            hint=f"to train on, raise training.max_steps above {step} (--set training.max_steps=N); "
            "to start afresh, --overwrite",
        )


def write_started_recipe(run_dir: Path, recipe: Recipe) -> None:
    """The resolved recipe, written when a run starts, so a resume (even after SIGKILL) can check it is the same."""
    (run_dir / RECIPE_FILE).write_text(resolved_recipe_yaml(recipe), encoding="utf-8")


def last_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = sorted((run_dir / CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [c for c in checkpoints if (c / "trainer_state.json").exists()]
    return complete[-1] if complete else None


def save_final_model(run_dir: Path, model, tokenizer, record: RunRecord, weights: dict | None = None) -> None:
    """The trained model, tokenizer and run record, written aside and moved in: a run folder never holds half a
    final model. `weights`: the whole state dict when the model is sharded over processes (training/gather.py)."""
    for stale in run_dir.glob(".final.partial*"):  # a save cut short by SIGKILL
        shutil.rmtree(stale, ignore_errors=True)
    aside = build_aside(run_dir / ".final")
    try:
        model.save_pretrained(aside, state_dict=weights)
        tokenizer.save_pretrained(aside)
        write_record(aside, record)
    except BaseException:
        shutil.rmtree(aside, ignore_errors=True)
        raise
    for item in aside.iterdir():
        target = run_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    aside.rmdir()


def write_run_files(run_dir: Path, recipe: Recipe, facts: dict) -> None:
    """The resolved recipe, the loss plot and run.json (the run's facts, the versions and the recipe)."""
    write_started_recipe(run_dir, recipe)
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
