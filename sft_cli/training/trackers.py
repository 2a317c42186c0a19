"""Experiment trackers (`training.report_to`): TensorBoard, MLflow, Trackio and Weights & Biases, driven by sft itself
rather than by transformers' integration callbacks, so every tracker gets the same things under the same names:

- at the start: the resolved recipe (parameters, and the whole recipe as a text or artifact) and the run plan;
- every log: `train/loss`, `train/learning_rate`, `train/grad_norm`, `train/tokens_per_s`,
  `train/trained_tokens_per_step`, `train/mean_token_accuracy`, ...; every evaluation: `eval/loss` and, with several
  sources, `eval/<label>/loss`; the x axis is the optimizer step;
- at the end: run.json's facts (stop reason, steps, tokens/s, final eval losses).

The run folder keeps metrics.jsonl and loss.png either way. TensorBoard's event files go to `<run>/tensorboard`.
`check_trackers` runs in `sft validate` and before `sft train` loads anything: a tracker that is not installed, or
needs a login it does not have, is one clear error with the command that fixes it. A resumed run continues the same
tracker run where the tracker can (MLflow, W&B, Trackio: ids kept in `<run>/trackers.json`).
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sft_cli.errors import RecipeError, SftError
from sft_cli.runs.record import read_run_facts, read_started_recipe

IDS_FILE = "trackers.json"
# the modules each tracker needs, and the extra that installs them
NEEDS = {
    "tensorboard": ("tensorboard",),
    "mlflow": ("mlflow",),
    "trackio": ("trackio",),
    "wandb": ("wandb",),
}
OFFLINE_WANDB = ("offline", "disabled", "dryrun")


def check_trackers(names: list[str], source: str) -> None:
    """Every tracker the recipe names can run here: installed, and logged in where it needs a login."""
    problems = []
    for name in names:
        missing = [module for module in NEEDS[name] if importlib.util.find_spec(module) is None]
        if name == "mlflow" and not missing and _mlflow_needs_database():
            missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(
                f"training.report_to: {name} is not installed (no module {missing[0]!r}): pip install 'sft-cli[{name}]'"
            )
        elif name == "wandb" and not _wandb_logged_in():
            problems.append(
                "training.report_to: wandb needs a login: run `wandb login` (or set WANDB_API_KEY), or log locally "
                "with WANDB_MODE=offline and upload later with `wandb sync`"
            )
    if problems:
        raise RecipeError(source, problems)


def _mlflow_needs_database() -> bool:
    """MLflow's default store (and any sqlite:// one) is a database it reaches through SQLAlchemy."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    return not uri or uri.startswith(("sqlite:", "postgresql", "mysql", "mssql"))


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_MODE", "").lower() in OFFLINE_WANDB or os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def flat(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """Nested settings as `a.b.c` keys (MLflow parameters and W&B summaries are flat)."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def metric_names(record: dict) -> dict[str, float]:
    """metrics.jsonl keys as tracker names: eval_loss -> eval/loss, eval_<label>_loss -> eval/<label>/loss, eval_x
    -> eval/x, anything else -> train/x. Step and epoch are the axis, not metrics."""
    out = {}
    for key, value in record.items():
        if key in ("step",) or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key.startswith("eval_") and key.endswith("_loss") and key != "eval_loss":
            name = "eval/" + key[len("eval_") : -len("_loss")] + "/loss"
        elif key.startswith("eval_"):
            name = "eval/" + key[len("eval_") :]
        else:
            name = "train/" + key
        out[name] = float(value)
    return out


class Trackers:
    """The trackers of one run, on the main process. `start` before the first step, `log` per metrics record,
    `finish` with run.json's facts (or `fail`, when the run ends in an error)."""

    def __init__(self, names: list[str], run_dir: Path, project: str, resume_step: int | None, reopen: bool = False):
        self.names, self.run_dir, self.project, self.resume_step = list(names), run_dir, project, resume_step
        self.reopen = reopen  # a finished run's tracker runs, continued after training (`sft eval --tasks`)
        self.open: dict[str, Any] = {}

    def start(self, recipe: dict, plan: dict) -> None:
        ids = saved_ids(self.run_dir) if self.resume_step is not None or self.reopen else {}
        for name in self.names:
            try:
                self.open[name] = STARTERS[name](self, recipe, plan, ids.get(name))
            except SftError:
                raise
            except Exception as error:  # a tracker's own failure (server down, bad credentials) is named
                self.fail()
                raise SftError(
                    f"training.report_to: {name} could not start: {error}",
                    hint="fix the tracker's settings, or remove it from training.report_to",
                ) from None
        ids = {name: tracker.run_id for name, tracker in self.open.items() if tracker.run_id}
        if ids:  # beside the ids of trackers not opened now (after training, each is reopened on its own)
            saved = {**saved_ids(self.run_dir), "project": self.project, **ids}
            (self.run_dir / IDS_FILE).write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")

    def log(self, record: dict) -> None:
        self.log_named(metric_names(record), record["step"])

    def log_named(self, metrics: dict[str, float], step: int) -> None:
        if metrics:
            for tracker in self.open.values():
                tracker.log(metrics, step)

    def finish(self, facts: dict) -> None:
        for tracker in self.open.values():
            tracker.finish(facts, failed=False)
        self.open = {}

    def fail(self) -> None:
        for tracker in self.open.values():
            try:
                tracker.finish({}, failed=True)
            except Exception:  # the run's own error is the one to report
                pass
        self.open = {}


class TensorBoard:
    def __init__(self, trackers: Trackers, recipe: dict, plan: dict, run_id: str | None):
        from torch.utils.tensorboard import SummaryWriter

        self.run_id = None
        # a resumed run logs the steps after its checkpoint again: TensorBoard drops those it had from before
        self.writer = SummaryWriter(str(trackers.run_dir / "tensorboard"), purge_step=trackers.resume_step)
        if not trackers.reopen:
            self.writer.add_text("recipe", _as_code(recipe), 0)
            self.writer.add_text("plan", _as_code(plan), 0)

    def log(self, metrics: dict, step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def finish(self, facts: dict, failed: bool) -> None:
        if facts:
            self.writer.add_text("run", _as_code(facts), facts.get("global_step", 0))
        self.writer.close()


class MLflow:
    def __init__(self, trackers: Trackers, recipe: dict, plan: dict, run_id: str | None):
        import mlflow

        self.mlflow = mlflow
        if run_id is None:
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or trackers.project)
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else trackers.run_dir.name)
        self.run_id = run.info.run_id
        if run_id is None:
            mlflow.log_params({k: _short(v) for k, v in flat({"recipe": recipe}).items()})
            mlflow.log_dict(recipe, "recipe.json")
            mlflow.log_dict(plan, "plan.json")

    def log(self, metrics: dict, step: int) -> None:
        self.mlflow.log_metrics({name.replace("/", "."): value for name, value in metrics.items()}, step=step)

    def finish(self, facts: dict, failed: bool) -> None:
        if facts:
            self.mlflow.log_dict(facts, "run.json")
        self.mlflow.end_run("FAILED" if failed else "FINISHED")


class Wandb:
    def __init__(self, trackers: Trackers, recipe: dict, plan: dict, run_id: str | None):
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or trackers.project,
            name=trackers.run_dir.name,
            dir=str(trackers.run_dir),
            id=run_id,
            resume="allow" if run_id else None,
            config={"recipe": recipe, "plan": plan},
        )
        self.run_id, self.reopened = self.run.id, trackers.reopen

    def log(self, metrics: dict, step: int) -> None:
        if self.reopened:  # W&B drops steps at or below the last one it has: the scores go to the summary
            self.run.summary.update(metrics)
            self.run.log(metrics)
        else:
            self.run.log(metrics, step=step)

    def finish(self, facts: dict, failed: bool) -> None:
        self.run.summary.update({k: v for k, v in flat(facts).items() if v is not None})
        self.run.finish(exit_code=1 if failed else 0)


class Trackio:
    def __init__(self, trackers: Trackers, recipe: dict, plan: dict, run_id: str | None):
        import trackio

        self.trackio = trackio
        name = run_id or trackers.run_dir.name
        trackio.init(
            project=os.environ.get("TRACKIO_PROJECT") or trackers.project,
            name=name,
            config={"recipe": recipe, "plan": plan},
            resume="allow" if run_id else "never",
        )
        self.run_id = name

    def log(self, metrics: dict, step: int) -> None:
        self.trackio.log(metrics, step=step)

    def finish(self, facts: dict, failed: bool) -> None:
        numbers = {f"run/{k}": v for k, v in flat(facts).items() if isinstance(v, (int, float)) and v is not None}
        if numbers:
            self.trackio.log(numbers, step=facts.get("global_step"))
        self.trackio.finish()


STARTERS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": Wandb, "trackio": Trackio}


def saved_ids(run_dir: Path) -> dict:
    """trackers.json: each tracker's run id, and the project they log to ({} where there is none)."""
    path = run_dir / IDS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}


def report_after_training(run_dir: Path, metrics: dict[str, float]) -> list[str]:
    """Send metrics measured after training to the trackers the run reported to, at its last step, into the same
    tracker runs. Returns one line for each tracker that could not take them (the metrics are on disk already)."""
    recipe, facts = read_started_recipe(run_dir), read_run_facts(run_dir)
    if recipe is None or facts is None:
        return []  # a merged or exported model folder: no training run to report to
    training = recipe.get("training") or {}
    names = training.get("report_to") or []
    if not names or not metrics:
        return []
    project = saved_ids(run_dir).get("project") or training.get("tracker_project") or run_dir.name
    problems = []
    for name in names:
        trackers = Trackers([name], run_dir, project, resume_step=None, reopen=True)
        try:
            trackers.start(recipe, facts.get("plan") or {})
            trackers.log_named(metrics, int(facts.get("global_step") or 0))
            trackers.finish({})
        except Exception as error:  # the tracker's own failure: the results are kept in the run folder anyway
            trackers.fail()
            problems.append(f"{name}: {error}")
    return problems


def _as_code(value: dict) -> str:
    """A dict as a Markdown code block (TensorBoard's text tab renders Markdown)."""
    return "```\n" + json.dumps(value, indent=2, default=str) + "\n```"


def _short(value: Any) -> str:
    """An MLflow parameter value: text of at most 6,000 characters (its limit)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]
