"""The `sft` command line: commands only. Each parses, calls one library function and hands the result to the
view (view.py, results_view.py), the only other modules that print. Heavy libraries (torch, transformers) are
imported inside command bodies so that `sft --help` and `sft validate` stay fast. The commands on a run folder live
in run_commands.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from sft_cli.cli import run_commands as cli_runs
from sft_cli.cli.common import RecipeArg, SetOpt, app, command, err, load, out, quiet_libraries
from sft_cli.errors import SftError

__all__ = ["app", "main"]


@command
def init(
    output: Path = typer.Option(Path("recipe.yaml"), "--output", "-o", help="Where to write the recipe."),
    template: str = typer.Option("alpaca", help="alpaca | human_assistant | special_tokens | chat"),
    force: bool = typer.Option(False, help="Replace an existing recipe file."),
    from_: Path | None = typer.Option(
        None,
        "--from",
        help="Translate an Axolotl YAML or a LLaMA-Factory training YAML instead; keys sft has no place for are "
        "listed at the top of the recipe and on stderr.",
    ),
    dataset_info: Path | None = typer.Option(
        None, "--dataset-info", help="With a LLaMA-Factory config: its dataset_info.json (default: its dataset_dir)."
    ),
) -> None:
    """Write a commented starter recipe (and a tiny example dataset beside it if none is there), or translate a
    peer's config with --from."""
    if from_ is not None:
        from sft_cli.recipe.translate import write_translation

        translation = write_translation(from_, output, dataset_info, force)
        for entry in translation.unmapped:
            err.print(f"not translated: {entry}", highlight=False, markup=False, soft_wrap=True)
        out.print(f"wrote {output} (from a {translation.source} config)")
    else:
        from sft_cli.recipe.starter import write_starter

        for path in write_starter(output, template, force):
            out.print(f"wrote {path}")
    out.print(f"next: sft validate {output} && sft preview {output}")


@command
def validate(
    recipe: Path = RecipeArg,
    set_: list[str] | None = SetOpt,
    memory: bool = typer.Option(
        False,
        "--memory",
        help="Also forecast the run's peak memory per process (encodes the data or reads the cache, and reads the "
        "model's config; no weights load).",
    ),
) -> None:
    """Check a recipe without loading any model: every problem at once, with its key and line."""
    from sft_cli.recipe.trainer_fields import check_trainer_args, source_field_names
    from sft_cli.training.trackers import check_trackers

    loaded = load(recipe, set_)
    check_trainer_args(loaded.recipe.trainer_args, source_field_names(), str(recipe))
    check_trackers(loaded.recipe.training.report_to, str(recipe))
    out.print(f"[green]✓[/] {recipe} is valid: {loaded.recipe.summary()}", highlight=False, soft_wrap=True)
    if memory:
        quiet_libraries()
        from sft_cli.cli.view import ProgressView, render_memory
        from sft_cli.training.memory import memory_warning, recipe_forecast

        forecast = recipe_forecast(loaded.recipe, ProgressView(err))
        render_memory(out, forecast.as_dict(), memory_warning(forecast))


NoCacheOpt = typer.Option(
    False, "--no-cache", help="Encode afresh and keep nothing (the cache is neither read nor written)."
)


@command
def preview(
    recipe: Path = RecipeArg,
    set_: list[str] | None = SetOpt,
    limit: int = typer.Option(3, "--limit", "-n", min=0, help="How many examples to show."),
    index: int | None = typer.Option(None, "--index", "-i", help="Show only this row (numbered from 1)."),
    split: str = typer.Option("train", help="train | eval"),
    source: str | None = typer.Option(None, "--source", help="Only this source of data.sources (by label)."),
    ids: bool = typer.Option(False, "--ids", help="Show each token's id."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout (examples, stats, warnings)."),
    no_cache: bool = NoCacheOpt,
) -> None:
    """Show, token by token, what the model will be trained on, then dataset-wide counts, lengths and warnings."""
    from sft_cli.encoding.preview import build_preview

    if split not in ("train", "eval"):
        raise SftError(f"--split: expected train or eval, got {split!r}")
    loaded = load(recipe, set_)
    quiet_libraries()
    from sft_cli.cli.view import ProgressView, render_examples, render_sources, render_stats

    show = None if as_json else (lambda shown: render_examples(out, shown, show_ids=ids))
    result = build_preview(
        loaded.recipe,
        split=split,
        limit=limit,
        index=index,
        source=source,
        cache=not no_cache,
        progress=ProgressView(err),
        on_examples=show,
    )
    document = result.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
        return
    title = f"{split} split ({'cached' if result.cached else 'encoded now'})"
    if result.mix.mixed:
        title = f"{split} split: {len(result.mix.parts)} sources as encoded, before the mix ({title.split('(')[1]}"
    render_stats(out, title, result.stats, result.warnings)
    if "sources" in document:
        render_sources(out, document["sources"], document["mix_warnings"])


@command
def prepare(recipe: Path = RecipeArg, set_: list[str] | None = SetOpt, no_cache: bool = NoCacheOpt) -> None:
    """Encode the train (and eval) rows into the prepared-dataset cache that preview and train read."""
    from sft_cli.cli.view import ProgressView, render_stats
    from sft_cli.encoding.mixing import prepare_data

    loaded = load(recipe, set_)
    quiet_libraries()
    mix = prepare_data(loaded.recipe, ("train", "eval"), cache=not no_cache, progress=ProgressView(err)).mix
    for name, prepared in mix.prepared().items():
        state = "cached" if prepared.cached else "encoded now"
        render_stats(out, f"{name} ({state})", prepared.stats, [("", w) for w in prepared.warnings])
        where = "not kept (--no-cache)" if no_cache else str(prepared.folder)
        out.print(f"{name}: {'reused' if prepared.cached else 'prepared'} {where}", highlight=False, soft_wrap=True)
        if no_cache:
            prepared.discard()


@command
def train(
    recipe: Path = RecipeArg,
    set_: list[str] | None = SetOpt,
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in output.dir (or the latest run of this recipe) from its last checkpoint.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Load and encode everything, print the plan, train nothing."),
    num_processes: int | None = typer.Option(
        None,
        "--num-processes",
        min=1,
        help="Train in N processes on this machine (gloo on CPU, one GPU each). Default: one per visible GPU "
        "(1 on CPU).",
    ),
    accelerate_config: Path | None = typer.Option(
        None,
        "--accelerate-config",
        help="accelerate config file (e.g. configs/accelerate/fsdp.yaml; FSDP and DeepSpeed need CUDA GPUs).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the transformers/TRL logs."),
    no_cache: bool = NoCacheOpt,
) -> None:
    """Fine-tune with TRL's SFTTrainer on exactly the tokens `sft preview` shows (prepared once, cached), in
    padding-free batches (attention never crosses examples)."""
    loaded = load(recipe, set_)  # a bad recipe fails here, before any model loads
    import torch

    from sft_cli.training.environment import detect_launch, processes_to_start

    launch = detect_launch()
    processes = processes_to_start(torch.cuda.device_count(), launch, num_processes)
    if processes > 1 or (accelerate_config and not launch.launched):
        from sft_cli.training.launch import launch_processes

        if num_processes is None:
            err.print(
                f"{processes} GPUs visible: training in {processes} processes, one per GPU (--num-processes 1 "
                "trains on one)",
                highlight=False,
            )
        raise typer.Exit(launch_processes(processes, accelerate_config))
    if not verbose:
        quiet_libraries()
    from sft_cli.cli.view import ProgressView
    from sft_cli.training.run import train as run_training
    from sft_cli.training.setup import distributed_state, process_group_timeout

    is_main = distributed_state(process_group_timeout(loaded.recipe)).is_main_process
    console = out if is_main else Console(file=open(os.devnull, "w"))
    result = run_training(
        loaded,
        resume=resume,
        overwrite=overwrite,
        dry_run=dry_run,
        no_cache=no_cache,
        progress=ProgressView(console),
        argv=["sft", *sys.argv[1:]],
    )
    if not is_main:
        return
    if dry_run:
        from sft_cli.cli.view import render_plan

        render_plan(out, result.plan)
        return
    if result.stop_reason == "interrupted":
        err.print(f"interrupted: checkpoint saved in {result.run_dir}\nresume with: {result.resume_command}")
        raise typer.Exit(result.exit_code)
    kept = f" (the best evaluation's weights: {result.kept})" if result.kept else ""
    out.print(
        f"[green]✓[/] {result.stop_reason}: model, tokenizer, metrics and run.json in {result.run_dir}{kept}",
        highlight=False,
        soft_wrap=True,
    )


for run_command in (cli_runs.generate, cli_runs.chat, cli_runs.eval, cli_runs.merge, cli_runs.export):
    command(run_command)


@command
def smoke(
    recipes: list[Path] = typer.Argument(
        ..., help="Recipe files (a shell glob works: configs/*.yaml).", show_default=False
    ),
    set_: list[str] | None = SetOpt,
    rows: int = typer.Option(64, "--rows", min=1, help="Rows of each data source to use."),
    steps: int = typer.Option(4, "--steps", min=2, help="Training steps (a checkpoint at half of them)."),
    junit: Path | None = typer.Option(None, "--junit", help="Also write JUnit XML here (one case per stage)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Run each recipe end to end on a tiny model of its own architecture (validate, preview, train, reload,
    resume, generate, export) on a CPU, for CI. Exit 0 only when every stage passed; 2 when a recipe, its data or
    its model needs fixing, 1 when something else failed."""
    from rich.markup import escape

    from sft_cli.cli.view import ProgressView, render_smoke
    from sft_cli.smoke.pipeline import smoke_recipe, write_junit

    quiet_libraries()
    progress = ProgressView(err)
    results = []
    for recipe in recipes:
        progress.note(f"smoke: {recipe}")
        results.append(smoke_recipe(recipe, set_ or [], rows, steps))
    if junit:
        write_junit(junit, results)
    if as_json:
        sys.stdout.write(json.dumps({"results": [r.as_dict() for r in results]}, ensure_ascii=False) + "\n")
    else:
        render_smoke(out, results)
    failures = [(r.recipe, r.failure) for r in results if r.failure]
    for recipe, stage in failures:
        err.print(f"[bold red]error:[/] {escape(recipe)}: {stage.name}: {escape(stage.message)}", highlight=False,
                  soft_wrap=True)  # fmt: skip
    if failures:  # 2: the recipes, their data or models need fixing; 1: something else broke
        raise typer.Exit(2 if all(stage.user_error for _, stage in failures) else 1)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
