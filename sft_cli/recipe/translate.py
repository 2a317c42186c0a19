"""`sft init --from FILE`: a starter recipe translated from a peer's config, an Axolotl YAML or a LLaMA-Factory
training YAML (with the `dataset_info.json` entries its `dataset` names). Each key sft has a place for is moved
there; every other key with a value is listed, as a comment at the top of the recipe and on stderr, never dropped
silently. The recipe then goes through `sft validate` like any other.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sft_cli.errors import SftError
from sft_cli.folders import check_writable

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass
class Translation:
    """The recipe as a mapping, where it came from, and the keys that have no place in it."""

    source: str  # "Axolotl" or "LLaMA-Factory"
    recipe: dict = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)  # "key: value (why)"

    def put(self, path: str, value: Any) -> None:
        """Set a dotted recipe key (`training.batch_size`)."""
        *parents, last = path.split(".")
        node = self.recipe
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def skip(self, key: str, value: Any, why: str = "") -> None:
        self.unmapped.append(f"{key}: {json.dumps(value, default=str)}" + (f" ({why})" if why else ""))

    def text(self, origin: Path) -> str:
        """The recipe's YAML, headed by where it came from and what was left out."""
        lines = [f"# translated by `sft init --from {origin}` from a {self.source} config"]
        if self.unmapped:
            lines.append("# keys not translated (set what you need by hand; `sft init` shows every key sft has):")
            lines += [f"#   {entry}" for entry in self.unmapped]
        order = ("model", "data", "template", "loss", "max_length", "lora", "training", "trainer_args", "output")
        recipe = dict(sorted(self.recipe.items(), key=lambda item: order.index(item[0])))
        return "\n".join(lines) + "\n" + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


# peer key -> (recipe key, conversion); a conversion returning None leaves the key unmapped
Rule = tuple[str, Callable[[Any], Any]]


def same(value: Any) -> Any:
    return value


def scheduler(value: Any) -> Any:
    return value if value in SCHEDULERS else None


def fraction(value: Any) -> Any:
    return value if isinstance(value, float) and 0 < value < 1 else None


def loss_of(train_on_inputs: Any) -> str:
    """Training on the prompt too is sft's unmasked loss."""
    return "unmasked" if train_on_inputs else "masked"


def targets(value: Any) -> Any:
    """LoRA target modules: a list, LLaMA-Factory's comma-separated text, or `all` (every linear layer)."""
    if value == "all":
        return "all-linear"
    return [t.strip() for t in value.split(",")] if isinstance(value, str) else value


COMMON: dict[str, Rule] = {
    "learning_rate": ("training.learning_rate", float),
    "gradient_accumulation_steps": ("training.gradient_accumulation_steps", same),
    "weight_decay": ("training.weight_decay", same),
    "warmup_ratio": ("training.warmup_ratio", same),
    "seed": ("training.seed", same),
    "logging_steps": ("training.logging_steps", same),
    "save_steps": ("training.save_steps", same),
    "eval_steps": ("training.eval_steps", same),
    "max_steps": ("training.max_steps", lambda v: v if isinstance(v, int) and v > 0 else None),
    "gradient_checkpointing": ("training.gradient_checkpointing", same),
    "output_dir": ("output.dir", same),
    "trust_remote_code": ("model.trust_remote_code", same),
    "lora_alpha": ("lora.alpha", same),
    "lora_dropout": ("lora.dropout", same),
}
AXOLOTL: dict[str, Rule] = {
    **COMMON,
    "base_model": ("model.name", same),
    "sequence_len": ("max_length", same),
    "sample_packing": ("training.packing", same),
    "num_epochs": ("training.epochs", same),
    "micro_batch_size": ("training.batch_size", same),
    "lr_scheduler": ("training.lr_scheduler", scheduler),
    "val_set_size": ("data.eval_fraction", fraction),
    "train_on_inputs": ("loss", loss_of),
    "lora_r": ("lora.r", same),
    "lora_target_modules": ("lora.target_modules", targets),
    "lora_target_linear": ("lora.target_modules", lambda v: "all-linear" if v else None),
}
LLAMA_FACTORY: dict[str, Rule] = {
    **COMMON,
    "model_name_or_path": ("model.name", same),
    "cutoff_len": ("max_length", same),
    "packing": ("training.packing", same),
    "num_train_epochs": ("training.epochs", float),
    "per_device_train_batch_size": ("training.batch_size", same),
    "lr_scheduler_type": ("training.lr_scheduler", scheduler),
    "val_size": ("data.eval_fraction", fraction),
    "max_samples": ("data.limit", same),
    "train_on_prompt": ("loss", loss_of),
    "lora_rank": ("lora.r", same),
    "lora_target": ("lora.target_modules", targets),
    "ddp_timeout": ("trainer_args.ddp_timeout", same),
}


def translate(path: Path, dataset_info: Path | None = None) -> Translation:
    """The recipe for a peer's config file (see the module docstring)."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise SftError(f"{path}: cannot read it ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise SftError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if isinstance(config, dict) and "base_model" in config:
        return from_axolotl(config)
    if isinstance(config, dict) and "model_name_or_path" in config:
        info = dataset_info or Path(path).parent / config.get("dataset_dir", "data") / "dataset_info.json"
        return from_llama_factory(config, info)
    raise SftError(
        f"{path}: neither an Axolotl config (base_model, datasets) nor a LLaMA-Factory training config "
        "(model_name_or_path, dataset)",
        hint="sft init --from reads those two; `sft init` writes a starter to fill in by hand",
    )


def apply_rules(config: dict, rules: dict[str, Rule], result: Translation, handled: set[str]) -> None:
    """Move every key a rule covers; list every other key that has a value (a switch left off is no value)."""
    for key, value in config.items():
        if key in handled or value is None or value == "" or value == []:
            continue
        rule = rules.get(key)
        converted = rule[1](value) if rule else None
        if converted is not None:
            result.put(rule[0], converted)
        elif value is not False:
            result.skip(key, value, "no sft equivalent" if rule is None else "a value sft does not take")


def from_axolotl(config: dict) -> Translation:
    result = Translation("Axolotl")
    adapter = config.get("adapter")
    if adapter in ("lora", "qlora"):
        result.put("lora", {})
        if adapter == "qlora" or config.get("load_in_4bit"):
            result.put("lora.load_in_4bit", True)
    elif adapter:
        result.skip("adapter", adapter, "sft trains LoRA, QLoRA or the full model")
    datasets = config.get("datasets") or []
    sources = [axolotl_source(entry, result) for entry in datasets if isinstance(entry, dict)]
    chats = any(s.get("format") in ("messages", "sharegpt") for s in sources)
    put_sources(result, sources)
    result.put("template", "chat" if chats or config.get("chat_template") else "alpaca")
    if config.get("chat_template") and config["chat_template"] != "tokenizer_default":
        result.skip("chat_template", config["chat_template"], "sft uses the tokenizer's own chat template")
    handled = {"adapter", "datasets", "chat_template", "load_in_4bit"}
    if config.get("lora_target_modules"):
        handled.add("lora_target_linear")  # the explicit list wins
    if "lora" not in result.recipe:
        handled |= not_trained(config, "lora_", result)
    apply_rules(config, AXOLOTL, result, handled)
    return result


def not_trained(config: dict, prefix: str, result: Translation) -> set[str]:
    """LoRA keys of a config that trains no adapter: listed, not translated (they would turn LoRA on)."""
    keys = {key for key, value in config.items() if key.startswith(prefix) and value not in (None, False, "", [])}
    for key in sorted(keys):
        result.skip(key, config[key], "the config trains no adapter")
    return keys


def axolotl_source(entry: dict, result: Translation) -> dict:
    """One of Axolotl's `datasets`: alpaca, chat_template (messages) or sharegpt types and their field names."""
    path = str(entry.get("path"))
    # a local file or folder (Axolotl reads them relative to where it runs): absolute, so the recipe finds it
    source: dict[str, Any] = {"path": str(Path(path).resolve()) if Path(path).exists() else path}
    kind = str(entry.get("type", ""))
    if kind.startswith("alpaca"):
        source["format"] = "alpaca"
    elif kind == "chat_template":
        source["format"] = "messages"
        if entry.get("field_messages", "messages") != "messages":
            source["columns"] = {"messages": entry["field_messages"]}
        roles = {alias: role for role, aliases in (entry.get("roles") or {}).items() for alias in aliases}
        roles = {alias: role for alias, role in roles.items() if alias != role}
        if roles:
            source["roles"] = roles
        for key in ("message_field_role", "message_field_content"):
            if entry.get(key) not in (None, "role", "content"):
                result.skip(f"datasets.{key}", entry[key], "sft reads role/content or from/value message keys")
    elif kind.startswith("sharegpt"):
        source["format"] = "sharegpt"
    else:
        result.skip("datasets.type", kind, "a dataset type sft does not read")
    for key in ("split", "name"):
        if entry.get(key):
            source[key] = entry[key]
    return source


def put_sources(result: Translation, sources: list[dict]) -> None:
    """One source as `data.path`, several as `data.sources`."""
    if len(sources) == 1:
        for key, value in sources[0].items():
            result.put(f"data.{key}", value)
    elif sources:
        result.put("data.sources", sources)


LLAMA_FACTORY_TAGS = {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "tool",
                      "function_tag": "tool_call", "system_tag": "system"}  # fmt: skip
# the ShareGPT role names sft knows already (data/conversations.py): no data.roles entry needed for them
SHAREGPT_DEFAULTS = {"human": "user", "gpt": "assistant", "observation": "tool", "function_call": "tool_call",
                     "system": "system"}  # fmt: skip


def from_llama_factory(config: dict, info_path: Path) -> Translation:
    result = Translation("LLaMA-Factory")
    if config.get("stage", "sft") != "sft":
        raise SftError(f"stage: {config['stage']}: sft init --from translates supervised fine-tuning configs only")
    kind = config.get("finetuning_type", "lora")
    if kind == "lora":
        result.put("lora", {"alpha": 2 * int(config.get("lora_rank", 8))})  # LLaMA-Factory's default alpha
        if config.get("quantization_bit") == 4:
            result.put("lora.load_in_4bit", True)
    elif kind != "full":
        result.skip("finetuning_type", kind, "sft trains LoRA, QLoRA or the full model")
    lora_keys = not_trained(config, "lora_", result) if kind != "lora" else set()
    names = [n.strip() for n in str(config.get("dataset", "")).split(",") if n.strip()]
    info = dataset_info(info_path, names)
    directory = info_path.parent
    put_sources(result, [llama_factory_source(name, info[name], directory, result) for name in names])
    result.put("template", "chat")  # LLaMA-Factory renders every dataset through a chat template
    if config.get("template"):
        result.skip("template", config["template"], "sft uses the tokenizer's own chat template")
    handled = {"stage", "finetuning_type", "quantization_bit", "dataset", "dataset_dir", "template", *lora_keys}
    handled |= {"do_train", "bf16", "fp16"} & {k for k, v in config.items() if v is True}  # sft decides precision
    apply_rules(config, LLAMA_FACTORY, result, handled)
    data = result.recipe.get("data", {})
    if "sources" in data and "limit" in data:  # max_samples caps each dataset
        limit = data.pop("limit")
        for source in data["sources"]:
            source["limit"] = limit
    return result


def dataset_info(path: Path, names: list[str]) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise SftError(
            f"{path}: not found; LLaMA-Factory's dataset names are defined there",
            hint="pass --dataset-info PATH/dataset_info.json",
        ) from None
    except json.JSONDecodeError as error:
        raise SftError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    missing = [name for name in names if name not in info]
    if missing:
        raise SftError(f"{path}: no entry for dataset {', '.join(missing)}", hint="add it, or fix `dataset:`")
    return info


def llama_factory_source(name: str, entry: dict, directory: Path, result: Translation) -> dict:
    """A `dataset_info.json` entry: file (relative to its folder) or hub id, formatting, columns and role tags."""
    file = entry.get("file_name")
    source: dict[str, Any] = {"path": str((directory / file).resolve()) if file else entry.get("hf_hub_url")}
    columns = entry.get("columns") or {}
    if entry.get("formatting", "alpaca") == "sharegpt":
        source["format"] = "sharegpt"
        if columns.get("messages", "conversations") != "conversations":
            source["columns"] = {"conversations": columns["messages"]}
        tags = entry.get("tags") or {}
        roles = {tags[tag]: role for tag, role in LLAMA_FACTORY_TAGS.items() if tags.get(tag)}
        roles = {name: role for name, role in roles.items() if SHAREGPT_DEFAULTS.get(name) != role}
        if roles:
            source["roles"] = roles
        for tag in ("role_tag", "content_tag"):
            if tags.get(tag) not in (None, "from", "value", "role", "content"):
                result.skip(f"{name}.tags.{tag}", tags[tag], "sft reads from/value or role/content message keys")
    else:
        source["format"] = "alpaca"
        ours = {"prompt": "instruction", "query": "input", "response": "output"}
        mapped = {ours[k]: v for k, v in columns.items() if k in ours and v != ours[k]}
        if mapped:
            source["columns"] = mapped
        for key in set(columns) - set(ours):
            result.skip(f"{name}.columns.{key}", columns[key], "no sft equivalent")
    if entry.get("ranking"):
        result.skip(f"{name}.ranking", True, "preference data: sft trains supervised rows")
    return source


def write_translation(source: Path, output: Path, dataset_info: Path | None, force: bool) -> Translation:
    """Translate `source` and write the recipe to `output` (never over an existing file without force)."""
    if output.exists() and not force:
        raise SftError(f"{output} already exists", hint="pick another --output, or pass --force to replace it")
    translation = translate(source, dataset_info)
    check_writable(output.parent, "writing the translated recipe")
    output.write_text(translation.text(source), encoding="utf-8")
    return translation
