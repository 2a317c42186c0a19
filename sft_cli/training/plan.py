"""What a run will do, known before any step: printed by `sft train --dry-run` and recorded in run.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_cli.encoding.mixing import Mix
from sft_cli.encoding.templates import extra_special_tokens
from sft_cli.recipe.schema import Recipe
from sft_cli.runs.folder import RunFolder
from sft_cli.training.batching import BatchPlan
from sft_cli.training.environment import Environment
from sft_cli.training.memory import MemoryForecast, memory_warning, run_forecast, trained_share


@dataclass
class Plan:
    """What a run will do, known before any step: printed by --dry-run and recorded in run.json."""

    run_dir: Path
    environment: Environment  # device, processes, sharding, precision, weights' dtypes, attention, loss, notes
    train_examples: int
    eval_examples: int
    train_tokens: int
    trained_tokens: int
    steps: int
    dropped: int
    truncated: int
    trainable_parameters: int = 0
    total_parameters: int = 0
    new_tokens: list[str] = field(default_factory=list)
    resume_from: str | None = None
    batching: BatchPlan | None = None  # layout, tokens per step, padding share, packing efficiency
    prepared: dict = field(default_factory=dict)  # per split: fingerprint, whether the cache had it, folder
    sources: list = field(default_factory=list)  # each source's examples, share, tokens (and hub revision)
    memory: MemoryForecast | None = None  # the peak memory forecast per process (memory.py)
    memory_warning: str | None = None  # when the forecast fills more than 90% of the device's memory
    # training.eval_generate: rows, max_new_tokens, evaluations, and the seconds one evaluation's generation takes
    # (timed on its first batch before training; None where the model is sharded over processes)
    eval_generate: dict | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: shown(v) for k, v in self.__dict__.items()}


def shown(value):
    """A plan value as run.json writes it: typed parts become dicts only here."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BatchPlan):
        return dict(value.__dict__)
    return value.as_dict() if isinstance(value, (Environment, MemoryForecast)) else value


def make_plan(
    recipe: Recipe,
    run_folder: RunFolder,
    env: Environment,
    mix: Mix,
    batch_plan: BatchPlan,
    lengths: list[int],
    model,
    runtime: int,
) -> Plan:
    """The plan from the setup stages' results: the environment, the sources' mix, the batch plan, the model, and
    the process's resident memory before the model loaded (`runtime`)."""
    t = recipe.training
    train, evaluation = mix.stats("train"), mix.stats("eval")
    per_step = t.batch_size * t.gradient_accumulation_steps * env.processes
    steps = t.max_steps or max(1, int(-(-batch_plan.items // per_step) * t.epochs))
    memory = run_forecast(recipe, model, lengths, trained_share(mix), runtime, env)
    return Plan(
        run_dir=run_folder.path,
        environment=env,
        train_examples=mix.examples,
        eval_examples=evaluation.examples,
        train_tokens=sum(p.tokens for p in mix.parts),
        trained_tokens=sum(p.trained_tokens for p in mix.parts),
        steps=steps,
        dropped=train.dropped,
        truncated=train.truncated,
        resume_from=run_folder.resume_from,
        prepared={
            split: {"fingerprint": p.fingerprint, "cached": p.cached, "folder": str(p.folder)}
            for split, p in mix.prepared().items()
        },
        sources=mix.shares(),
        batching=batch_plan,
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_parameters=sum(p.numel() for p in model.parameters()),
        new_tokens=extra_special_tokens(recipe.template),
        memory=memory,
        memory_warning=memory_warning(memory),
    )
