"""`sft init`: a commented starter recipe generated from the schema, so its comments are the schema's own."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel

from sft_cli.errors import SftError
from sft_cli.folders import check_writable
from sft_cli.recipe.schema import Recipe
from sft_cli.recipe.sections import TEMPLATE_NAMES

EXAMPLE_DATA = "data/example.jsonl"
EXAMPLE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ALPACA_ROWS = [
    {"instruction": "Translate to French.", "input": "Good morning!", "output": "Bonjour !"},
    {"instruction": "Name the largest ocean.", "input": "", "output": "The Pacific Ocean."},
    {"instruction": "Reverse the word.", "input": "stressed", "output": "desserts"},
]
CHAT_ROWS = [
    {
        "messages": [
            {"role": "user", "content": "What is the capital of Japan?"},
            {"role": "assistant", "content": "Tokyo."},
            {"role": "user", "content": "And of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Opposite of hot?"},
            {"role": "assistant", "content": "Cold."},
        ]
    },
]


def _scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def _emit(model: type[BaseModel], values: dict, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    # model and data first: the contract fields (template, loss, ...) come from a base class, so before them
    fields = sorted(model.model_fields.items(), key=lambda item: item[0] not in ("model", "data"))
    for name, field in fields:
        description = field.description or ""
        value = values.get(name, field.get_default(call_default_factory=True))
        nested = _nested_model(field.annotation)
        if nested and isinstance(value, (BaseModel, dict)):
            lines.append(f"{pad}{name}:{'  # ' + description if description else ''}")
            sub = value.model_dump() if isinstance(value, BaseModel) else value
            _emit(nested, sub, indent + 1, lines)
        elif nested and value is None:
            lines.append(f"{pad}# {name}:  # {description}")
            example = nested.model_construct().model_dump() if not _required(nested) else {}
            for sub_name, sub_value in example.items():
                lines.append(f"{pad}#   {sub_name}: {_scalar(sub_value)}")
        elif value is None:
            lines.append(f"{pad}# {name}:  # {description}")
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}  # {description}")


def _nested_model(annotation) -> type[BaseModel] | None:
    import typing

    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _required(model: type[BaseModel]) -> bool:
    return any(f.is_required() for f in model.model_fields.values())


def starter_recipe(template: str) -> str:
    """The text of a starter recipe for a built-in template; it validates as written."""
    if template not in TEMPLATE_NAMES:
        raise SftError(f"--template: unknown template {template!r}", hint=f"choose {' | '.join(TEMPLATE_NAMES)}")
    values = {
        "model": {"name": EXAMPLE_MODEL},
        "data": {"path": EXAMPLE_DATA, "format": "messages" if template == "chat" else "alpaca"},
        "template": template,
    }
    lines = [
        "# sft recipe, written by `sft init`: every key with its default and what it does.",
        "# Check it with `sft validate`, see what will be trained with `sft preview`, then `sft train`.",
    ]
    _emit(Recipe, values, 0, lines)
    text = "\n".join(lines) + "\n"
    Recipe.model_validate(yaml.safe_load(text))  # a starter that does not validate is a bug
    return text


def write_starter(output: Path, template: str, force: bool = False) -> list[Path]:
    """Write the recipe and, when absent, a small example dataset beside it; never overwrite without force."""
    if output.exists() and not force:
        raise SftError(f"{output} already exists", hint="pick another --output, or pass --force to replace it")
    check_writable(output.parent, "writing the starter recipe")
    output.write_text(starter_recipe(template), encoding="utf-8")
    written = [output]
    data = output.parent / EXAMPLE_DATA
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        rows = CHAT_ROWS if template == "chat" else ALPACA_ROWS
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        written.append(data)
    return written


def recipe_reference() -> str:
    """docs/recipe.md: the starter recipe `sft init` writes, so the reference and the starter share one source."""
    return (
        "# Recipe reference\n\n"
        "Every key of a recipe, its default and what it does: the text `sft init` writes (the alpaca starter; `sft\n"
        "init --template chat` differs in `data.format` and `template`). Generated from the schema by `python\n"
        "scripts/write_recipe_reference.py`; `tests/recipe/test_recipe.py` fails when this page and the schema\n"
        "differ.\n"
        "Keys shown commented out are optional sections or values that default to none.\n\n"
        f"```yaml\n{starter_recipe('alpaca')}```\n\n"
        "[Back to the README](../README.md) · [All pages](README.md)\n"
    )
