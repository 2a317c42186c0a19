"""`sft smoke`: a recipe's whole path, run on a tiny model of its own architecture (smoke/model.py) and its first
rows, in well under a minute on a CPU: what a CI job runs on every change to a recipe, a dataset or a template.

Stages, in order (a failed stage skips the rest): validate (the recipe; settings that need a GPU are reported and
replaced for the CPU run), tiny model, preview (rows encode; every example has trained tokens and ends on its end
token), train (a few fp32 steps, finite loss, LoRA targets resolved on the real module names), reload (the run
folder loads), resume (from its checkpoint), generate (one answer with the run's template), export (`--format hf`,
round-trip checked)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from sft_cli.errors import SftError
from sft_cli.recipe.schema import LoadedRecipe, load_recipe
from sft_cli.runs.record import METRICS_FILE

STAGES = ("validate", "gpu settings", "tiny model", "preview", "train", "reload", "resume", "generate", "export")


@dataclass
class Stage:
    name: str
    status: str  # passed | failed | skipped
    seconds: float
    message: str = ""
    user_error: bool = False  # failed on the recipe, its data or its model (an SftError), not on a bug


@dataclass
class SmokeResult:
    recipe: str
    stages: list[Stage] = field(default_factory=list)
    folder: str | None = None  # the run's working folder, kept when a stage failed

    @property
    def passed(self) -> bool:
        return all(stage.status != "failed" for stage in self.stages)

    @property
    def failure(self) -> Stage | None:
        return next((stage for stage in self.stages if stage.status == "failed"), None)

    def as_dict(self) -> dict:
        return {"recipe": self.recipe, "passed": self.passed, "folder": self.folder,
                "stages": [asdict(s) for s in self.stages]}  # fmt: skip


@dataclass
class Smoke:
    """One recipe's smoke run as it goes: the settings, and what earlier stages produced."""

    path: Path
    overrides: list[str]
    rows: int
    steps: int
    folder: Path
    loaded: LoadedRecipe | None = None
    tiny: Path | None = None
    run_dir: Path | None = None
    cpu_overrides: list[str] = field(default_factory=list)

    def recipe(self, *extra: str) -> LoadedRecipe:
        """The recipe as smoke runs it: the tiny model, the first rows, a few steps, CPU settings."""
        recipe = self.loaded.recipe
        half = max(1, self.steps // 2)
        training = [f"training.max_steps={self.steps}", f"training.save_steps={half}", "training.logging_steps=1"]
        if recipe.has_eval:
            training.append(f"training.eval_steps={half}")
        limits = [f"data.sources.{i}.limit={self.rows}" for i in range(len(recipe.data.sources))] or [
            f"data.limit={self.rows}"
        ]
        settings = [f"model.name={self.tiny}", *limits, f"output.dir={self.folder / 'run'}"]
        return load_recipe(self.path, [*self.overrides, *settings, *training, *self.cpu_overrides, *extra])


def smoke_recipe(path: Path, overrides: list[str], rows: int = 64, steps: int = 4) -> SmokeResult:
    """Run every stage on one recipe; a stage's failure is recorded with its message, never raised."""
    folder = Path(tempfile.mkdtemp(prefix="sft-smoke-"))
    smoke = Smoke(Path(path), overrides, rows, steps, folder)
    result = SmokeResult(str(path))
    for name, run in zip(STAGES, (_validate, _gpu_settings, _tiny, _preview, _train, _reload, _resume,
                                  _generate, _export)):  # fmt: skip
        result.stages.append(_stage(name, run, smoke, skip=not result.passed))
    if result.passed:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        result.folder = str(folder)
    return result


def _stage(name: str, run: Callable[[Smoke], str], smoke: Smoke, skip: bool) -> Stage:
    if skip:
        return Stage(name, "skipped", 0.0, "an earlier stage failed")
    started = time.perf_counter()
    user_error = False
    try:
        message = run(smoke)
        status = "skipped" if message.startswith("skipped: ") else "passed"
        message = message.removeprefix("skipped: ")
    except SftError as error:
        status, message = "failed", error.message + (f" (hint: {error.hint})" if error.hint else "")
        user_error = True
    except Exception as error:  # a bug or a library failure: the stage fails, the rest of the run still reports
        status, message = "failed", f"{type(error).__name__}: {error}"
    return Stage(name, status, round(time.perf_counter() - started, 2), message, user_error)


def _validate(smoke: Smoke) -> str:
    from sft_cli.recipe.trainer_fields import check_trainer_args, source_field_names

    smoke.loaded = load_recipe(smoke.path, smoke.overrides)
    check_trainer_args(smoke.loaded.recipe.trainer_args, source_field_names(), str(smoke.path))
    return smoke.loaded.recipe.summary()


def _gpu_settings(smoke: Smoke) -> str:
    """Settings only a GPU runs are checked by validation and replaced for the CPU run, with the reason."""
    recipe, reasons = smoke.loaded.recipe, []
    if recipe.training.precision in ("bf16", "fp16"):
        smoke.cpu_overrides.append("training.precision=fp32")
        reasons.append(f"training.precision {recipe.training.precision} runs as fp32 (no GPU)")
    if recipe.lora and recipe.lora.load_in_4bit:
        smoke.cpu_overrides.append("lora.load_in_4bit=false")
        reasons.append("lora.load_in_4bit (QLoRA) runs as plain LoRA (needs CUDA and bitsandbytes)")
    return "skipped: " + "; ".join(reasons) if reasons else "none"


def _tiny(smoke: Smoke) -> str:
    from sft_cli.smoke.model import tiny_model

    smoke.tiny, cached = tiny_model(smoke.loaded.recipe.model)
    return f"{'from the cache' if cached else 'built'}: {smoke.tiny}"


def _preview(smoke: Smoke) -> str:
    from sft_cli.encoding.encode import IGNORE
    from sft_cli.encoding.preview import build_preview

    preview = build_preview(smoke.recipe().recipe, limit=1)
    stats = preview.stats
    if not stats.examples:
        raise SftError(f"no example left: {stats.dropped} of {stats.rows} rows dropped",
                       hint="run `sft preview` on the recipe: max_length and on_overflow decide")  # fmt: skip
    untrained = [f"{part.label} row {row}" for part in preview.mix.parts
                 for row, labels in _rows_and_labels(part.prepared["train"].dataset())
                 if all(label == IGNORE for label in labels)]  # fmt: skip
    if untrained:
        raise SftError(f"rows {untrained[:5]} have no trained token")
    if any(w.kind == "end_token_missing" for _, w in preview.warnings):
        raise SftError("trained tokens do not end with the end token: the model would not learn to stop",
                       hint="run `sft preview` on the recipe to see which rows")  # fmt: skip
    return f"{stats.examples} examples, {stats.trained_tokens} trained tokens"


def _rows_and_labels(dataset):
    return zip(dataset["row"], dataset["labels"])


def _train(smoke: Smoke) -> str:
    from sft_cli.training.run import train

    result = train(smoke.recipe())
    smoke.run_dir = result.run_dir
    losses = [r["loss"] for r in _metrics(result.run_dir) if "loss" in r]
    if not losses or not all(math.isfinite(loss) for loss in losses):
        raise SftError(f"training loss is not finite: {losses[:8]}")
    return f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]


def _reload(smoke: Smoke) -> str:
    from sft_cli.runs.generate import load_run

    run = load_run(smoke.run_dir)
    return f"{type(run.model).__name__} with its run record"


def _resume(smoke: Smoke) -> str:
    from sft_cli.training.run import train

    result = train(smoke.recipe(f"training.max_steps={smoke.steps + 1}"), resume=True)
    return f"from {Path(result.plan.resume_from).name} to step {smoke.steps + 1}"


def _generate(smoke: Smoke) -> str:
    from sft_cli.data.rows import load_rows
    from sft_cli.runs.generate import Sampling, generate, load_run

    row = load_rows(smoke.recipe().recipe).rows[0]
    answer = generate(load_run(smoke.run_dir), [row.fields], Sampling(max_new_tokens=8))[0]
    return f"row {row.number}: {answer[:40]!r}"


def _export(smoke: Smoke) -> str:
    from sft_cli.export.exporter import export_run

    result = export_run(smoke.run_dir, "hf", smoke.folder / "export", check=2, max_new_tokens=8)
    if not result.verified:
        raise SftError(f"the hf export does not answer as sft does: {result.check.first_failure}")
    return "hf export verified on 2 rows"


def write_junit(path: Path, results: list[SmokeResult]) -> None:
    """JUnit XML: a test suite per recipe, a test case per stage (what CI systems display)."""
    suites = ElementTree.Element("testsuites", name="sft smoke")
    for result in results:
        suite = ElementTree.SubElement(
            suites, "testsuite", name=result.recipe, tests=str(len(result.stages)),
            failures=str(sum(s.status == "failed" for s in result.stages)),
            skipped=str(sum(s.status == "skipped" for s in result.stages)),
            time=f"{sum(s.seconds for s in result.stages):.2f}",
        )  # fmt: skip
        for stage in result.stages:
            case = ElementTree.SubElement(suite, "testcase", classname=result.recipe, name=stage.name,
                                          time=f"{stage.seconds:.2f}")  # fmt: skip
            if stage.status in ("failed", "skipped"):
                tag = "failure" if stage.status == "failed" else "skipped"
                ElementTree.SubElement(case, tag, message=stage.message)
    ElementTree.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
