"""Where a model lives (hub id, folder, .gguf file) and loading its tokenizer; transformers is imported lazily."""

from __future__ import annotations

from pathlib import Path

from sft_cli.errors import SftError
from sft_cli.recipe import ModelSection, Recipe


def model_location(model: ModelSection) -> tuple[str, dict]:
    """(name or folder, from_pretrained kwargs): a path to a .gguf file becomes its folder + gguf_file."""
    kwargs: dict = {"trust_remote_code": model.trust_remote_code}
    if model.revision:
        kwargs["revision"] = model.revision
    name = model.name
    if name.endswith(".gguf") and Path(name).is_file():
        kwargs["gguf_file"] = Path(name).name
        return str(Path(name).parent), kwargs
    if model.gguf_file:
        kwargs["gguf_file"] = model.gguf_file
    return name, kwargs


def load_tokenizer(recipe: Recipe):
    """The recipe's tokenizer, with the template's special tokens and a pad token added."""
    from transformers import AutoTokenizer

    from sft_cli.encode import prepare_tokenizer
    from sft_cli.templates import check_chat_template

    name, kwargs = model_location(recipe.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        raise SftError(
            f"model.name: cannot load a tokenizer from {name}: {str(exc).splitlines()[0]}",
            hint="give a hub id (needs internet), a local model folder, or a .gguf file",
        ) from None
    if recipe.template == "chat":
        check_chat_template(tokenizer)
    prepare_tokenizer(tokenizer, recipe)
    return tokenizer
