"""`sft eval RUN --tasks`: lm-evaluation-harness tasks scored on a run's model (prompted through the run's own
contract, `harness_model.RunModel`) and, with `--base`, on its untouched base in the same invocation: each task's
score, the base's, and the difference (what the fine-tune gained, and what it forgot).

Tasks are lm-eval's own names (ifeval, gsm8k, mmlu, ...) or task YAML files (data files in them are read relative to
the YAML's folder). A task whose data lives on the Hugging Face hub needs the hub or the datasets cache: out of reach
and not cached, it is one error naming the task, at once, before any model loads. Results are kept in the run
folder (`eval/harness-<time>.json`) and sent to the trackers the run reported to."""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sft_cli.errors import SftError
from sft_cli.hub import hub_unreachable, offline_hub

EXTRA = "pip install 'sft-cli[eval]'"
RESULTS_FOLDER = "eval"


@dataclass
class TaskScore:
    """One metric of one task (or group): the tuned model's value, the base's, and lm-eval's standard error."""

    task: str
    metric: str
    tuned: float
    base: float | None = None
    stderr: float | None = None
    base_stderr: float | None = None
    higher_is_better: bool | None = None
    samples: int | None = None

    @property
    def change(self) -> float | None:
        return None if self.base is None else self.tuned - self.base

    @property
    def forgotten(self) -> bool:
        """The tuned model scores worse than its base on this metric, by more than the standard error of the
        difference."""
        if self.change is None or self.higher_is_better is None:
            return False
        worse = -self.change if self.higher_is_better else self.change
        return worse > math.hypot(self.stderr or 0.0, self.base_stderr or 0.0)

    def as_dict(self) -> dict:
        return {**asdict(self), "change": self.change}


@dataclass
class HarnessResult:
    tasks: list[str]
    scores: list[TaskScore]
    limit: int | None
    num_fewshot: int | None
    prompt: str  # "run": through the run's template; "raw": the task's text as it is
    seconds: float
    raw: dict[str, dict] = field(default_factory=dict)  # lm-eval's own results, by model ("tuned", "base")
    saved_to: Path | None = None
    tracker_problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "tasks": self.tasks,
            "limit": self.limit,
            "num_fewshot": self.num_fewshot,
            "prompt": self.prompt,
            "seconds": round(self.seconds, 1),
            "scores": [score.as_dict() for score in self.scores],
            "saved_to": str(self.saved_to) if self.saved_to else None,
        }

    def tracker_metrics(self) -> dict[str, float]:
        """`harness/<task>/<metric>` for the tuned model, `harness_base/...` for its base."""
        metrics = {}
        for score in self.scores:
            name = f"{score.task}/{score.metric}"
            metrics[f"harness/{name}"] = score.tuned
            if score.base is not None:
                metrics[f"harness_base/{name}"] = score.base
        return metrics


def require_harness() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise SftError("--tasks needs lm-evaluation-harness, which is not installed", hint=EXTRA)


def split_tasks(values: list[str]) -> list[str]:
    """`--tasks a,b --tasks c` as [a, b, c], without repeats."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return list(dict.fromkeys(names))


def is_task_file(name: str) -> bool:
    return name.lower().endswith((".yaml", ".yml"))


@dataclass
class Tasks:
    """The tasks of one evaluation, their data loaded, checked before any model loads."""

    names: list[str]
    loaded: dict  # lm-eval's {"tasks", "groups", "group_map"}
    offline: str | None  # why the hub is out of reach: the evaluation runs offline too (metrics may download)


def load_tasks(names: list[str]) -> Tasks:
    """lm-eval's tasks (and groups) for the names, data loaded. Every name is checked before any data is fetched;
    with the hub out of reach only cached hub datasets load, and the first that is not is one error; a task named
    twice, or one sft does not run (generated code, images), is refused here."""
    from lm_eval.tasks import TaskManager

    for name in names:
        if is_task_file(name) and not Path(name).is_file():
            raise SftError(f"--tasks: task file not found: {name}")
    manager = TaskManager()
    known = set(manager.all_tasks)
    for name in names:
        if not is_task_file(name) and name not in known:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            raise SftError(
                f"--tasks: {name!r} is not an lm-eval task, group or tag",
                hint=f"did you mean {', '.join(close)}?"
                if close
                else "`lm-eval ls tasks` lists them; or give a task YAML",
            )
    unreachable = hub_unreachable()
    loaded = []
    with offline_hub(unreachable is not None), download_timeout():
        for name in names:
            loaded.extend(_load_task(manager, name, unreachable))
    _refuse_repeats(loaded)
    tasks = manager.load(loaded)
    for task_name, task in tasks["tasks"].items():
        if getattr(task, "UNSAFE_CODE", False) or task.config.unsafe_code:
            raise SftError(
                f"--tasks: {task_name} runs the code the model writes (unsafe_code); sft eval does not",
                hint="run it with lm-eval's own CLI and --confirm_run_unsafe_code, on `sft merge`'s folder",
            )
        if getattr(task, "MULTIMODAL", False) or task.config.doc_to_image or task.config.doc_to_audio:
            raise SftError(f"--tasks: {task_name} gives the model images or audio; sft eval scores text models")
    return Tasks(names, tasks, unreachable)


def _refuse_repeats(loaded: list) -> None:
    """lm-eval keys tasks by name: a task given twice (two YAMLs with one `task:`, or a group and one of its
    tasks) would be scored once, silently."""
    seen = []
    for item in loaded:
        seen += (
            [task.task_name for task in item.get_all_tasks()] if hasattr(item, "get_all_tasks") else [item.task_name]
        )
    repeated = sorted({name for name in seen if seen.count(name) > 1})
    if repeated:
        raise SftError(
            f"--tasks: {', '.join(repeated)} given more than once (a group already holds its tasks)",
            hint="give each task once; two task YAMLs need two different `task:` names",
        )


@contextlib.contextmanager
def download_timeout(seconds: float = 10.0) -> Iterator[None]:
    """Tasks may download at import or scoring time (nltk's tokenizer data, `evaluate` metrics) through sockets
    without a timeout: on a network that drops packets each would wait for ever; here a silent socket fails
    after `seconds`."""
    import socket

    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _load_task(manager, name: str, unreachable: str | None) -> list:
    spec = str(Path(name).resolve()) if is_task_file(name) else name
    try:
        with _working_dir(Path(spec).parent if is_task_file(name) else None):
            tasks = manager.load([spec])
    except Exception as error:  # lm-eval and datasets raise many types; the user needs the task and the reason
        reason = first_line(error)
        if unreachable and isinstance(error, ConnectionError):  # datasets' offline and unreachable errors
            hint = (
                f"the Hugging Face hub is out of reach ({unreachable}) and the datasets cache does not hold this "
                "task's data: run it once with internet, or give a task YAML with local data files"
            )
        elif isinstance(error, ImportError):
            module = (error.name or reason).split(".")[0]
            hint = f"the task imports {module}: pip install {module} (lm-eval's extras list what each task needs)"
        else:
            hint = "check the task's YAML, its dataset_path and its data files"
        raise SftError(f"--tasks: {name}: cannot be loaded ({reason})", hint=hint) from None
    groups = tasks["groups"]  # a group (mmlu) is passed whole: lm-eval reports it beside its tasks
    top = groups.get(name) or next(iter(groups.values()), None)
    return [top] if top is not None else list(tasks["tasks"].values())


def first_line(error: Exception) -> str:
    """What a library's exception says, in one line (lm-eval and datasets raise many types)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@contextlib.contextmanager
def _working_dir(folder: Path | None) -> Iterator[None]:
    """A task YAML's data files are read relative to its folder (datasets resolves them from the working
    directory while it loads)."""
    if folder is None:
        yield
        return
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def run_harness(
    run_dir: Path,
    tasks: Tasks,
    base: bool = False,
    limit: int | None = None,
    num_fewshot: int | None = None,
    prompt: str = "run",
    on_model=None,
    on_request=None,
) -> HarnessResult:
    """Score the run's model (and with `base` its base first) on the tasks, both prompted the same way (`prompt`:
    "run" through the run's template, "raw" the task's text as it is); `on_model(label)` when a model starts,
    `on_request(n)` as requests finish."""
    start = time.monotonic()
    for noisy in ("lm_eval", "lm-eval"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from sft_cli.runs.generate import load_run
    from sft_cli.runs.harness_model import RunModel

    raw = {}
    for label in (["base"] if base else []) + ["tuned"]:
        if on_model:
            on_model(label)
        model = RunModel(load_run(run_dir, base=label == "base"), raw=prompt == "raw", on_request=on_request)
        with offline_hub(tasks.offline is not None), download_timeout():
            try:
                raw[label] = _evaluate(model, tasks.loaded, limit, num_fewshot)
            except ValueError as error:  # lm-eval's refusals: fewer rows than --num-fewshot asks, ...
                raise SftError(f"--tasks: lm-eval cannot run these tasks so: {first_line(error)}") from None
        del model
    scores = task_scores(raw["tuned"], raw.get("base"))
    return HarnessResult(tasks.names, scores, limit, num_fewshot, prompt, time.monotonic() - start, raw)


def _evaluate(model, tasks: dict, limit: int | None, num_fewshot: int | None) -> dict:
    """lm-eval's `evaluate` set up as its `simple_evaluate` sets it up (its seeds; each task's own few-shot count
    unless one is given, never over a task that fixes 0), without the environment report that one adds (a git
    call, the installed packages) or lm-eval's per-task progress bars (sft draws its own)."""
    import random
    from functools import partial
    from unittest import mock

    import lm_eval.api.task
    import numpy
    import torch
    from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED
    from lm_eval.evaluator import evaluate
    from tqdm import tqdm

    random.seed(DEFAULT_RANDOM_SEED)
    numpy.random.seed(DEFAULT_OTHER_SEED)
    torch.manual_seed(DEFAULT_OTHER_SEED)
    for task in tasks["tasks"].values():
        default = task.get_config("num_fewshot")
        if num_fewshot is not None and default != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif default is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    with mock.patch.object(lm_eval.api.task, "tqdm", partial(tqdm, disable=True)):
        return evaluate(lm=model, task_dict=tasks, limit=limit, log_samples=False, verbosity="ERROR")


def task_scores(tuned: dict, base: dict | None) -> list[TaskScore]:
    """Every metric lm-eval reports for every task and group, in its order, the base's value beside."""
    scores = []
    for task, metrics in tuned["results"].items():
        higher = tuned.get("higher_is_better", {}).get(task, {})
        samples = tuned.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue  # metrics are "name,filter"; alias and sample counts are not
            metric, _, filter_name = key.partition(",")
            base_metrics = (base or {}).get("results", {}).get(task, {})
            scores.append(
                TaskScore(
                    task,
                    metric if filter_name == "none" else f"{metric} ({filter_name})",
                    float(value),
                    _number(base_metrics.get(key)),
                    _number(metrics.get(f"{metric}_stderr,{filter_name}")),
                    _number(base_metrics.get(f"{metric}_stderr,{filter_name}")),
                    higher.get(metric),
                    samples,
                )
            )
    return scores


def _number(value) -> float | None:
    """lm-eval writes "N/A" where it has no value (a standard error it could not compute)."""
    return float(value) if isinstance(value, (int, float)) else None


def keep_results(run_dir: Path, result: HarnessResult) -> Path:
    """The results (and lm-eval's task configs and versions) as a new file in `<run>/eval`; never overwrites."""
    folder = Path(run_dir) / RESULTS_FOLDER
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = folder / f"harness-{stamp}.json", 2
    while path.exists():
        path, n = folder / f"harness-{stamp}-{n}.json", n + 1
    document = {**result.as_dict(), "lm_eval": {label: _lean(raw) for label, raw in result.raw.items()}}
    path.write_text(json.dumps(document, indent=2, default=str, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _lean(raw: dict) -> dict:
    """lm-eval's results without what is large and says nothing of the scores (its environment dump)."""
    return {k: v for k, v in raw.items() if k not in ("pretty_env_info", "samples", "task_hashes")}
