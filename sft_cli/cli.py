"""The `sft` command line. Each command parses, calls one library function and renders the result.

This is the only module that prints. Heavy libraries (torch, transformers) are imported inside command
bodies so that `sft --help` and `sft validate` stay fast.
"""

from __future__ import annotations

import functools
import json
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
