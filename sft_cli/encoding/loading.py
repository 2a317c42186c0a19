"""Where a model lives (hub id, folder, .gguf file) and loading it and its tokenizer (transformers, lazily)."""

from __future__ import annotations

import os
from pathlib import Path

from sft_cli.errors import SftError
from sft_cli.hub import hub_unreachable, looks_local
from sft_cli.recipe.schema import Recipe
from sft_cli.recipe.sections import ModelSection


def model_location(model: ModelSection) -> tuple[str, dict]:
    """(name or folder, from_pretrained kwargs): a path to a .gguf file becomes its folder + gguf_file. A local
    path that does not exist is "not found" at once; a hub id without a reachable hub reads the hub cache only."""
    name = model.name
    if not Path(name).exists() and looks_local(name):
        raise SftError(
            f"model.name: not found: {name}", hint="give an existing model folder or .gguf file, or a hub id"
        )
    kwargs: dict = {"trust_remote_code": model.trust_remote_code}
    if not Path(name).exists() and hub_unreachable():
        kwargs["local_files_only"] = True  # the hub cache, or a clear error in a second
    if model.revision:
        kwargs["revision"] = model.revision
    if name.endswith(".gguf") and Path(name).is_file():
        kwargs["gguf_file"] = Path(name).name
        return str(Path(name).parent), kwargs
    if model.gguf_file:
        kwargs["gguf_file"] = model.gguf_file
    return name, kwargs


def _cannot_load(what: str, name: str, exc: Exception) -> SftError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    unreachable = None if Path(name).exists() else hub_unreachable()
    if unreachable:
        reason = f"not in the hub cache, and the hub is out of reach ({unreachable})"
    return SftError(
        f"model.name: cannot load the {what} from {name}: {reason}",
        hint="give a hub id (needs internet), a local model folder, or a .gguf file",
    )


def _damaged_weights(name: str, exc: Exception) -> SftError:
    """A weights file safetensors cannot read (truncated by a full disk or an interrupted copy)."""
    files = sorted(Path(name).glob("*.safetensors")) if Path(name).is_dir() else []
    where = ", ".join(str(f) for f in files) or name
    return SftError(
        f"{where}: the weights file is damaged ({exc})",
        hint="copy or download the model again; a run folder's weights come back by training again or from a "
        "checkpoint (--resume)",
    )


def check_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise SftError(
            "template: chat needs a tokenizer with a chat template, and this one has none",
            hint="pick template: alpaca, human_assistant or special_tokens, or a custom template",
        )


def load_tokenizer(recipe: Recipe):
    """The recipe's tokenizer, with the template's special tokens and a pad token added."""
    from transformers import AutoTokenizer

    from sft_cli.encoding.encode import prepare_tokenizer

    name, kwargs = model_location(recipe.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        raise _cannot_load("tokenizer", name, exc) from None
    if recipe.template == "chat":
        check_chat_template(tokenizer)
    prepare_tokenizer(tokenizer, recipe)
    return tokenizer


def load_model(model: ModelSection, dtype, quantization_config=None, vocab_size: int | None = None):
    """A causal LM in `dtype`, its embeddings grown to `vocab_size` where a tokenizer gained tokens (the
    template's special tokens). A GGUF checkpoint is dequantized and rebuilt as a plain model, because
    transformers refuses to save a GGUF-loaded model; the rebuilt one saves as normal safetensors."""
    from transformers import AutoModelForCausalLM

    name, kwargs = model_location(model)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        loaded = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise _cannot_load("model", name, exc) from None
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        raise _damaged_weights(name, exc) from None
    if "gguf_file" in kwargs:
        config = loaded.config
        del config.quantization_config
        config.name_or_path = name
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=model.trust_remote_code)
        plain.load_state_dict(loaded.state_dict())
        plain.generation_config = loaded.generation_config
        loaded = plain
    grow_embeddings(loaded, vocab_size)
    return loaded


def grow_embeddings(model, vocab_size: int | None) -> None:
    """Embedding rows for the tokens a tokenizer gained (the template's special tokens); never shrinks."""
    if vocab_size and vocab_size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size)


def load_model_skeleton(model: ModelSection, vocab_size: int | None = None):
    """The model's architecture on the meta device: every parameter's shape, no weights read or allocated (the
    memory forecast of `sft validate --memory`)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    name, kwargs = model_location(model)
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        raise _cannot_load("model config", name, exc) from None
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=model.trust_remote_code)
        grow_embeddings(skeleton, vocab_size)
    return skeleton


def quiet_libraries() -> None:
    """Silence the transformers/TRL/datasets log flood (commands show it again with --verbose)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
