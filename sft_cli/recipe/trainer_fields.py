"""SFTConfig's field names, read from the installed TRL and transformers sources without importing them
(importing costs seconds; `sft validate` must stay instant). Training checks the real classes again."""

from __future__ import annotations

import ast
import difflib
import importlib.util
from pathlib import Path

from sft_cli.errors import RecipeError

# Keys sft sets from the recipe itself; trainer_args may not change where outputs go or how data is prepared.
RESERVED = {"output_dir", "dataset_kwargs", "remove_unused_columns", "max_length", "packing"}
SOURCES = {  # package -> files whose dataclass fields make up SFTConfig
    "trl": ("trainer/sft_config.py", "trainer/base_config.py"),
    "transformers": ("training_args.py",),
}


def source_field_names() -> set[str] | None:
    """Annotated class attributes of SFTConfig and its bases; None where the sources cannot be found."""
    names: set[str] = set()
    for package, files in SOURCES.items():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.origin:
            return None
        for relative in files:
            path = Path(spec.origin).parent / relative
            if not path.exists():
                return None
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    names |= {
                        s.target.id
                        for s in node.body
                        if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                    }
    return names


def check_trainer_args(trainer_args: dict, names: set[str] | None, source: str = "recipe") -> None:
    """Every trainer_args key must be a real SFTConfig field that sft does not set itself."""
    problems = []
    for key in trainer_args:
        if key in RESERVED:
            problems.append(f"trainer_args.{key}: set by sft itself; use the recipe's own keys")
        elif names is not None and key not in names:
            guess = difflib.get_close_matches(key, sorted(names), n=1)
            tip = f"; did you mean '{guess[0]}'?" if guess else ""
            problems.append(f"trainer_args.{key}: not an SFTConfig field{tip}")
    if problems:
        raise RecipeError(source, problems, hint="see TRL's SFTConfig and transformers' TrainingArguments")
