"""The `sft` command line: commands only. Each parses, calls one library function and hands the result to the
view (view.py), the only other module that prints. Heavy libraries (torch, transformers) are imported inside
command bodies so that `sft --help` and `sft validate` stay fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

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
    """Print a user mistake as `error:` / `hint:` on stderr and exit 2."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(error.message)}", highlight=False, soft_wrap=True)
    if error.hint:
        err.print(f"[yellow]hint:[/] {escape(error.hint)}", highlight=False, soft_wrap=True)
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


def quiet_libraries() -> None:
    from sft_cli.loading import quiet_libraries as quiet  # imports transformers: only in commands that need it

    quiet()


def _load(recipe_path: Path, overrides: list[str] | None):
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
def validate(recipe: Path = RecipeArg, set_: list[str] | None = SetOpt) -> None:
    """Check a recipe without loading any model: every problem at once, with its key and line."""
    from sft_cli.trainer_fields import check_trainer_args, source_field_names

    loaded = _load(recipe, set_)
    check_trainer_args(loaded.recipe.trainer_args, source_field_names(), str(recipe))
    out.print(f"[green]✓[/] {recipe} is valid: {loaded.recipe.summary()}", highlight=False, soft_wrap=True)


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
    ids: bool = typer.Option(False, "--ids", help="Show each token's id."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout (examples, stats, warnings)."),
    no_cache: bool = NoCacheOpt,
) -> None:
    """Show, token by token, what the model will be trained on, then dataset-wide counts, lengths and warnings."""
    from sft_cli.preview import build_preview

    if split not in ("train", "eval"):
        raise SftError(f"--split: expected train or eval, got {split!r}")
    loaded = _load(recipe, set_)
    quiet_libraries()
    from sft_cli.view import ProgressView, render_examples, render_stats

    show = None if as_json else (lambda shown: render_examples(out, shown, show_ids=ids))
    result = build_preview(
        loaded.recipe,
        split=split,
        limit=limit,
        index=index,
        cache=not no_cache,
        progress=ProgressView(err),
        on_examples=show,
    )
    if as_json:
        sys.stdout.write(json.dumps(result.as_json(), ensure_ascii=False) + "\n")
        return
    render_stats(out, result.prepared)


@command
def prepare(recipe: Path = RecipeArg, set_: list[str] | None = SetOpt, no_cache: bool = NoCacheOpt) -> None:
    """Encode the train (and eval) rows into the prepared-dataset cache that preview and train read."""
    from sft_cli.loading import load_tokenizer
    from sft_cli.prepared import prepare_split
    from sft_cli.templates import render_options
    from sft_cli.view import ProgressView, render_stats

    loaded = _load(recipe, set_)
    quiet_libraries()
    tokenizer = load_tokenizer(loaded.recipe)
    options = render_options(loaded.recipe, tokenizer)
    for split in ("train", "eval") if loaded.recipe.has_eval else ("train",):
        prepared = prepare_split(
            loaded.recipe, tokenizer, split, cache=not no_cache, progress=ProgressView(err), options=options
        )
        render_stats(out, prepared)
        where = "not kept (--no-cache)" if no_cache else str(prepared.folder)
        out.print(f"{split}: {'reused' if prepared.cached else 'prepared'} {where}", highlight=False, soft_wrap=True)
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
    num_processes: int = typer.Option(
        1, "--num-processes", min=1, help="Start N processes: torchrun on CPU (gloo), accelerate launch on GPUs."
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
    loaded = _load(recipe, set_)  # a bad recipe fails here, before any model loads
    if num_processes > 1 or accelerate_config:
        from sft_cli.launch import launch_processes

        raise typer.Exit(launch_processes(num_processes, accelerate_config))
    if not verbose:
        quiet_libraries()
    from sft_cli.train import train as run_training
    from sft_cli.train_setup import distributed_state
    from sft_cli.view import ProgressView

    is_main = distributed_state().is_main_process
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
        from sft_cli.view import render_plan

        render_plan(out, result.plan)
        return
    if result.stop_reason == "interrupted":
        err.print(f"interrupted: checkpoint saved in {result.run_dir}\nresume with: {result.resume_command}")
        raise typer.Exit(130)
    out.print(
        f"[green]✓[/] {result.stop_reason}: model, tokenizer, metrics and run.json in {result.run_dir}", highlight=False
    )


RunArg = typer.Argument(
    ..., help="A run folder written by `sft train` (or `sft merge`, `sft export --format hf`).", show_default=False
)
MaxNewOpt = typer.Option(128, "--max-new-tokens", min=1, help="Longest answer in tokens.")
TemperatureOpt = typer.Option(0.0, "--temperature", min=0.0, help="0 is greedy; above 0 samples.")
TopPOpt = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling share (with --temperature).")


@command
def generate(
    run_dir: Path = RunArg,
    instruction: str | None = typer.Argument(None, help="The instruction (or use --file)."),
    input_text: str = typer.Option("", "--input", help="The input field, when the task has one."),
    file: Path | None = typer.Option(None, "--file", help="Rows (jsonl/json/csv) to answer, in the training format."),
    output: Path | None = typer.Option(None, "--output", "-o", help="With --file: write rows + `generated` here."),
    max_new_tokens: int = MaxNewOpt,
    temperature: float = TemperatureOpt,
    top_p: float = TopPOpt,
) -> None:
    """Answer with a trained model, prompted exactly as in training (same template, same tokenization)."""
    from sft_cli.data import rows_to_answer
    from sft_cli.generate import Sampling, load_run
    from sft_cli.generate import generate as generate_answers

    if (instruction is None) == (file is None):
        raise SftError(
            "give an instruction or --file, not both", hint='sft generate RUN "Reverse the word." --input stone'
        )
    if output and output.exists():
        raise SftError(f"{output} already exists", hint="pick another --output")
    quiet_libraries()
    run = load_run(run_dir)
    sampling = Sampling(max_new_tokens, temperature, top_p)
    if instruction is not None:
        out.print(
            generate_answers(run, [{"instruction": instruction, "input": input_text}], sampling)[0],
            highlight=False,
            markup=False,
        )
        return
    records, rows = rows_to_answer(str(file))
    answers = generate_answers(run, rows, sampling)
    lines = [
        json.dumps({**record, "generated": answer}, ensure_ascii=False) for record, answer in zip(records, answers)
    ]
    if output:
        output.write_text("\n".join(lines) + "\n", encoding="utf-8")
        out.print(f"wrote {len(lines)} rows to {output}")
    else:
        sys.stdout.write("\n".join(lines) + "\n")


@command
def chat(
    run_dir: Path = RunArg,
    max_new_tokens: int = MaxNewOpt,
    temperature: float = TemperatureOpt,
    top_p: float = TopPOpt,
    system: str = typer.Option("", "--system", help="A system message (chat-template runs)."),
) -> None:
    """Talk to a trained model: multi-turn for chat-template runs, one instruction per line otherwise.
    /reset clears the history, /exit (or end of input) quits."""
    from sft_cli.generate import Sampling, load_run
    from sft_cli.generate import generate as generate_answers

    quiet_libraries()
    run = load_run(run_dir)
    sampling = Sampling(max_new_tokens, temperature, top_p)
    multi_turn = run.template == "chat"
    start = [{"role": "system", "content": system}] if system and multi_turn else []
    history = list(start)
    out.print(
        f"chatting with {run_dir} ({'multi-turn' if multi_turn else 'one instruction per line'}); /reset, /exit",
        highlight=False,
    )
    for line in sys.stdin:
        text = line.strip()
        if text == "/exit":
            break
        if text == "/reset":
            history = list(start)
            continue
        if not text:
            continue
        if multi_turn:
            history.append({"role": "user", "content": text})
            row = {"messages": history + [{"role": "assistant", "content": ""}]}
        else:
            row = {"instruction": text, "input": ""}
        answer = generate_answers(run, [row], sampling)[0]
        if multi_turn:
            history.append({"role": "assistant", "content": answer})
        out.print(f"> {answer}", highlight=False, markup=False)


@command
def eval(
    run_dir: Path = RunArg,
    data: Path = typer.Option(..., "--data", help="Rows with answers (same format as training)."),
    base: bool = typer.Option(False, "--base", help="Also evaluate the untouched base model, side by side."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N rows."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Longest generated answer."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Answer-token loss and perplexity, exact match and containment, overall and per `task` column."""
    from sft_cli.evaluate import evaluate
    from sft_cli.generate import Sampling
    from sft_cli.view import ProgressView

    if not data.exists():
        raise SftError(f"--data: not found: {data}")
    quiet_libraries()
    results = []
    sampling = Sampling(max_new_tokens=max_new_tokens)
    progress = ProgressView(err)
    for is_base in ([True] if base else []) + [False]:
        progress.start("base model" if is_base else "tuned model")
        try:
            results.append(
                evaluate(run_dir, data, base=is_base, limit=limit, sampling=sampling, on_batch=progress.advance)
            )
        finally:
            progress.stop()
    if as_json:
        sys.stdout.write(json.dumps({"results": [r.as_dict() for r in results]}, ensure_ascii=False) + "\n")
        return
    from sft_cli.view import render_eval

    render_eval(out, results)


@command
def merge(
    run_dir: Path = RunArg,
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the merged model."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder."),
) -> None:
    """Merge a LoRA run's adapter into its base: a standard folder any transformers user can load."""
    from sft_cli.merge import merge_run

    quiet_libraries()
    target = merge_run(run_dir, output, overwrite)
    out.print(f"[green]✓[/] merged model in {target}", highlight=False)


@command
def export(
    run_dir: Path = RunArg,
    format: str = typer.Option(..., "--format", "-f", help="hf (transformers, vLLM, TGI) | gguf (llama.cpp) | ollama"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Folder to write; default RUN-FORMAT[-DTYPE]."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="f32 | f16 | bf16, and q8_0 for GGUF; default: as trained for hf, f16 for GGUF."
    ),
    check: int = typer.Option(
        16,
        "--check",
        min=0,
        help="Rows of the run's eval data (else train data) to check: prompt ids, greedy "
        "answer and stop through the export's own runtime.",
    ),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the check (the export is then unverified)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Longest answer the check generates."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    as_json: bool = typer.Option(False, "--json", help="The export report as one JSON document on stdout."),
) -> None:
    """Export a run where users run models, with the prompt format and stop tokens it was trained with, checked
    to answer as `sft generate` does. A LoRA run is merged first; the run folder is never changed."""
    from sft_cli.export.exporter import export_run
    from sft_cli.view import ProgressView, render_export

    quiet_libraries()
    result = export_run(
        run_dir,
        format,
        output,
        dtype,
        overwrite=overwrite,
        check=0 if no_check else check,
        max_new_tokens=max_new_tokens,
        progress=ProgressView(err),
    )
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict(), ensure_ascii=False) + "\n")
    else:
        render_export(out, result)
    if not result.verified:
        raise typer.Exit(1)


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

    from sft_cli.smoke import smoke_recipe, write_junit
    from sft_cli.view import ProgressView, render_smoke

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
