"""A tiny model of a recipe's own architecture, for `sft smoke`: the source model's config and tokenizer are read
(no weights), the config is shrunk to a few small layers, and a randomly initialised model of the same class is
built. Kept: the architecture class, vocabulary, special tokens, chat template, generation config, attention kind
(sliding window, soft-capping, the per-layer pattern) and tied or untied embeddings. Cached by the source's identity
in `~/.cache/sft/smoke/`, so a second smoke run skips the build."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

from sft_cli.encoding.loading import model_location
from sft_cli.errors import SftError
from sft_cli.folders import build_aside, cache_home, move_into_place
from sft_cli.recipe.sections import ModelSection

SHRUNK = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "head_dim": 16}


def smoke_cache() -> Path:
    return cache_home() / "smoke"


def tiny_config(config):
    """The config shrunk to two layers of width 64; everything that shapes behaviour, not size, is kept."""
    tiny = copy.deepcopy(config)
    for key, value in SHRUNK.items():
        if getattr(tiny, key, None) is not None:
            setattr(tiny, key, value)
    heads, kv = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if kv is not None:
        tiny.num_key_value_heads = 4 if kv == heads else 2  # multi-head stays multi-head, grouped stays grouped
    if getattr(tiny, "layer_types", None):
        kinds = list(dict.fromkeys(config.layer_types))  # one layer of each kind the model has, in its order
        tiny.layer_types = (kinds * 2)[:2]
    return tiny


def _identity(model: ModelSection) -> str:
    name, kwargs = model_location(model)
    local = Path(name)
    files = (
        sorted(p for p in local.iterdir() if p.suffix in (".json", ".jinja", ".model", ".gguf"))
        if local.is_dir()
        else []
    )
    digest = hashlib.sha256(json.dumps([name, model.revision, kwargs.get("gguf_file")]).encode())
    for path in files:
        digest.update(path.name.encode())
        digest.update(str(path.stat().st_size).encode() + str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()[:16]


def tiny_model(model: ModelSection) -> tuple[Path, bool]:
    """(folder of the tiny model, whether the cache had it) for the recipe's model section."""
    folder = smoke_cache() / _identity(model)
    if (folder / "config.json").is_file():
        return folder, True
    shutil.rmtree(folder, ignore_errors=True)  # a build cut short
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    name, kwargs = model_location(model)
    kwargs.pop("quantization_config", None)
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SftError(
            f"model.name: cannot read the config and tokenizer of {name}: {reason}",
            hint="smoke needs the model's config and tokenizer files (no weights): run once with internet, or "
            "`huggingface-cli download NAME --include '*.json' '*.jinja' '*.model'` and point model.name at it",
        ) from None
    import torch

    torch.manual_seed(0)
    try:
        built = AutoModelForCausalLM.from_config(tiny_config(config), dtype=torch.float32,
                                                 trust_remote_code=model.trust_remote_code)  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        kind = (getattr(config, "architectures", None) or [config.model_type])[0]
        reason = str(exc).splitlines()[0].split(" Model type should be")[0]
        raise SftError(f"model.name: transformers cannot build {kind} as a causal LM: {reason}") from None
    try:
        built.generation_config = GenerationConfig.from_pretrained(name, **kwargs)
        own_generation_config = True
    except (OSError, ValueError):
        own_generation_config = False
    partial = build_aside(folder)
    built.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if not own_generation_config:
        # save_pretrained writes one from config.json's eos; the source has none, and stop tokens then come from
        # its chat template (encoding/tokens.py): the tiny model must read the same files training reads
        (partial / "generation_config.json").unlink(missing_ok=True)
    move_into_place(partial, folder)
    return folder, False
