"""What every command shares: the Typer app, the two consoles, the error contract (a user mistake prints `error:` and
`hint:` on stderr and exits 2, without a traceback), recipe loading and the switch that quiets library logs."""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import typer
from rich.console import Console

from sft_cli.errors import SftError, Terminated

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
    """Register a command whose user mistakes (SftError) print as error/hint and exit 2, without a traceback, and
    which a signal stops the same way everywhere: Ctrl-C exits 130, SIGTERM 143, each after the command's own
    clean-up (training turns either into a checkpoint first: training/callbacks.py)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return fn(*args, **kwargs)
        except SftError as error:
            fail(error)
        except KeyboardInterrupt:
            err.print("interrupted (Ctrl-C)", highlight=False)
            raise typer.Exit(130) from None
        except Terminated:
            err.print("terminated (SIGTERM)", highlight=False)
            raise typer.Exit(143) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return app.command()(wrapper)


def _raise_terminated(signum, frame):
    raise Terminated()


def quiet_libraries() -> None:
    from sft_cli.encoding.loading import quiet_libraries as quiet  # imports transformers: only in commands that need it

    quiet()


def load(recipe_path: Path, overrides: list[str] | None):
    from sft_cli.recipe.schema import load_recipe

    return load_recipe(recipe_path, overrides or [])
