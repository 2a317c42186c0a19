"""The recipe: schema, YAML loading with line numbers, `--set` overrides, every problem reported at once."""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from sft_cli.errors import RecipeError
from sft_cli.recipe_yaml import apply_overrides, key_lines, recipe_text

TEMPLATE_NAMES = ("alpaca", "human_assistant", "special_tokens", "chat")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
FULL_LR, LORA_LR = 2.0e-5, 2.0e-4


class Section(BaseModel):
    """A recipe section: unknown keys are errors, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(Section):
    name: str = Field(description="hub id, local folder, or a local .gguf file")
    gguf_file: str | None = Field(None, description="file name inside `name` when it is a folder holding a .gguf")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    trust_remote_code: bool = Field(False, description="run model code shipped with the checkpoint")


class CustomTemplate(Section):
    prompt: str = Field(description="prompt format with {field} placeholders, e.g. 'Q: {instruction}\\nA: '")
    response: str = Field("{output}", description="response format (trained under masked loss); EOS follows")
    special_tokens: list[str] = Field(default_factory=list, description="tokens to add to the tokenizer")


def _known_template(name: str) -> str:
    if name not in TEMPLATE_NAMES:
        guess = difflib.get_close_matches(name, TEMPLATE_NAMES, n=1)
        tip = f"did you mean '{guess[0]}'? " if guess else ""
        raise ValueError(f"unknown template {name!r}; {tip}choose {' | '.join(TEMPLATE_NAMES)} or a custom mapping")
    return name


TemplateSpec = Annotated[
    Annotated[Annotated[str, AfterValidator(_known_template)], Tag("name")] | Annotated[CustomTemplate, Tag("custom")],
    Discriminator(lambda value: "custom" if isinstance(value, (dict, CustomTemplate)) else "name"),
]


SOURCE_KEYS = ("path", "name", "revision", "format", "columns", "split", "eval_path", "eval_fraction", "limit")
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"


class SourceFields(Section):
    """Where one source's rows come from and how its columns read: the keys a single `data.path` takes, and
    each entry of `data.sources`."""

    path: str = Field(description=".jsonl .json .csv .parquet, a folder of them, a save_to_disk folder, or a hub id")
    name: str | None = Field(None, description="hub dataset configuration (subset) name")
    revision: str | None = Field(None, description="hub dataset revision (branch, tag or commit); recorded")
    format: Literal["alpaca", "prompt_completion", "messages"] | None = Field(
        None, description="alpaca | prompt_completion | messages; detected from the columns when omitted"
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="map the format's field names to your columns, e.g. {output: answer}"
    )
    split: str = Field("train", description="split to read from a hub dataset or a DatasetDict folder")
    eval_path: str | None = Field(None, description="held-out rows for evaluation (same format)")
    eval_fraction: float | None = Field(None, gt=0, lt=1, description="or: hold out this share of rows (seeded)")
    limit: int | None = Field(None, ge=1, description="use only the first N rows")

    @model_validator(mode="after")
    def _one_eval(self) -> SourceFields:
        if self.eval_path and self.eval_fraction:
            raise ValueError("give eval_path or eval_fraction, not both")
        return self


class SourceSection(SourceFields):
    """One entry of `data.sources`: a source, its name in metrics, and its part of the mix."""

    label: str | None = Field(
        None, pattern=LABEL_PATTERN, description="name in metrics and preview (eval_<label>_loss); default: file stem"
    )
    weight: float | None = Field(
        None, gt=0, description="share of each epoch's training examples (weights are normalised to sum to 1)"
    )
    max_rows: int | None = Field(None, ge=1, description="at most this many of the source's examples (seeded sample)")

    @property
    def default_label(self) -> str:
        stem = Path(self.path.rstrip("/")).name.split(".")[0]
        return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-") or "source"


class DataSection(Section):
    path: str | None = Field(None, description="one source: " + SourceFields.model_fields["path"].description)
    name: str | None = SourceFields.model_fields["name"]
    revision: str | None = SourceFields.model_fields["revision"]
    format: Literal["alpaca", "prompt_completion", "messages"] | None = SourceFields.model_fields["format"]
    columns: dict[str, str] = SourceFields.model_fields["columns"]
    split: str = SourceFields.model_fields["split"]
    eval_path: str | None = SourceFields.model_fields["eval_path"]
    eval_fraction: float | None = Field(
        None, gt=0, lt=1, description="hold out this share of rows (seeded); with sources: each source's default"
    )
    limit: int | None = SourceFields.model_fields["limit"]
    sources: list[SourceSection] = Field(
        default_factory=list,
        description="instead of path: several sources, each with the keys above plus label, weight, max_rows",
    )
    on_bad_row: Literal["error", "skip"] = Field("error", description="error | skip (and count) malformed rows")
    cache_dir: str | None = Field(
        None, description="where prepared (encoded) datasets are cached; default $SFT_CACHE_DIR or ~/.cache/sft"
    )
    num_proc: int | None = Field(None, ge=1, description="processes that encode rows; default: one per core")

    @model_validator(mode="after")
    def _one_form(self) -> DataSection:
        if self.path and self.sources:
            raise ValueError("give data.path (one source) or data.sources (several), not both")
        if not self.path and not self.sources:
            raise ValueError("data.path (one source) or data.sources (several) is required")
        if self.sources:
            single = sorted(  # set away from its default: a saved recipe (model_dump) spells every key
                key
                for key in set(SOURCE_KEYS) - {"eval_fraction"}
                if getattr(self, key) != type(self).model_fields[key].get_default(call_default_factory=True)
            )
            if single:
                raise ValueError(
                    f"with data.sources, {', '.join('data.' + k for k in single)} belong in each source entry"
                )
            labels = [s.label or s.default_label for s in self.sources]
            repeated = sorted({label for label in labels if labels.count(label) > 1})
            if repeated:
                raise ValueError(f"data.sources: label {repeated[0]!r} is used twice; give each source its own label")
            weighted = [s.weight is not None for s in self.sources]
            if any(weighted) and not all(weighted):
                raise ValueError("data.sources: give every source a weight, or none (then each gives all its rows)")
        return self

    def source_entries(self) -> list[SourceSection]:
        """Every source as a `data.sources` entry: the one-source short form is a list of one."""
        if self.sources:
            fraction = self.eval_fraction
            return [
                s
                if s.eval_path or s.eval_fraction or not fraction
                else s.model_copy(update={"eval_fraction": fraction})
                for s in self.sources
            ]
        return [SourceSection(**{key: getattr(self, key) for key in SOURCE_KEYS})]


class EarlyStopping(Section):
    patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    threshold: float = Field(0.0, ge=0, description="smallest change that counts as an improvement")
    metric: str = Field("eval_loss", description="metric to watch; lower is better for *loss metrics")


class LoraSection(Section):
    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names")
    load_in_4bit: bool = Field(False, description="QLoRA: 4-bit base weights (CUDA + bitsandbytes only)")


def _tracker_list(value: Any) -> Any:
    """`report_to: tensorboard` and `report_to: none` read as lists, as in transformers."""
    if value is None or value == "none":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and len(set(map(str, value))) < len(value):
        raise ValueError("a tracker is listed twice")
    return value


class TrainingSection(Section):
    learning_rate: float | None = Field(
        None, gt=0, description=f"peak learning rate; default {FULL_LR:g} full, {LORA_LR:g} LoRA"
    )
    epochs: float = Field(3.0, gt=0, description="passes over the training rows")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(8, ge=1, description="examples per device per step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="steps accumulated per optimizer update")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="learning-rate schedule"
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of steps spent warming up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    seed: int = Field(42, description="seed for data order, eval split and initialisation")
    eval_steps: int | None = Field(
        None, ge=1, description="evaluate every N steps (default: 50 when there is eval data)"
    )
    save_steps: int | None = Field(None, ge=1, description="checkpoint every N steps (default: eval_steps, else 500)")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept")
    logging_steps: int = Field(10, ge=1, description="log metrics every N steps")
    report_to: Annotated[list[Literal["tensorboard", "mlflow", "trackio", "wandb"]], BeforeValidator(_tracker_list)] = (
        Field(default_factory=list, description="experiment trackers: [tensorboard, mlflow, trackio, wandb]; [] none")
    )
    tracker_project: str | None = Field(
        None, description="tracker project (W&B, Trackio) or experiment (MLflow); default the recipe's file name"
    )
    early_stopping: EarlyStopping | None = Field(None, description="stop when the eval metric stops improving")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on capable GPUs, fp16 on older GPUs, fp32 on CPU"
    )
    chunked_loss: bool = Field(
        True, description="loss through the LM head over trained tokens only, in chunks: never the full logits (CPU)"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward: less memory, slower steps"
    )
    compile: bool = Field(
        False, description="torch.compile each decoder layer (dynamic shapes); off: on CPU it did not repay its cost"
    )
    padding_free: bool = Field(
        True, description="concatenate a batch's examples without padding; attention stays inside each example"
    )
    packing: bool = Field(
        False, description="pack short examples into bins of max_length tokens (never split); batch_size counts bins"
    )


class ChatSection(Section):
    system_message: Literal["keep", "merge_into_first_user"] = Field(
        "keep", description="keep | merge_into_first_user (for templates that refuse a system turn, e.g. Gemma)"
    )
    train_reasoning: bool = Field(True, description="train an assistant turn's reasoning (<think>, thinking) too")
    template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra variables for the chat template, e.g. {enable_thinking: false}"
    )


class OutputSection(Section):
    dir: str | None = Field(None, description="run folder; default runs/<recipe name>-<timestamp>")


class EncodingSpec(Section):
    """The train/inference contract: every recipe choice that decides how a row becomes prompt ids, answer ids and
    trained tokens. Training records it in the run folder (run_record.py); preview, the prepared-data fingerprint,
    generate, eval, merge and export all read it from there or from the recipe, never field by field."""

    template: TemplateSpec = Field(
        "alpaca", description="alpaca | human_assistant | special_tokens | chat | {prompt, response, special_tokens}"
    )
    loss: Literal["masked", "unmasked"] = Field("masked", description="masked: answer + end token | unmasked: all")
    loss_turns: Literal["all", "last"] = Field("all", description="chats: train every assistant turn, or the last")
    max_length: int = Field(1024, ge=8, description="longest example in tokens")
    on_overflow: Literal["drop", "truncate_prompt", "error"] = Field(
        "drop", description="drop | truncate_prompt (cut the prompt from the left) | error"
    )
    special_tokens_in_text: Literal["plain", "control"] = Field(
        "plain", description="row text spelling a special token, e.g. '<|im_end|>': plain text | control token"
    )
    chat: ChatSection = Field(default_factory=ChatSection, description="template: chat only")


class Recipe(EncodingSpec):
    """A whole recipe. Its contract fields (EncodingSpec) stay top-level keys in YAML; `encoding` gathers them."""

    model: ModelSection
    data: DataSection
    lora: LoraSection | None = Field(None, description="LoRA adapters instead of full fine-tuning")
    training: TrainingSection = Field(default_factory=TrainingSection)
    trainer_args: dict[str, Any] = Field(
        default_factory=dict, description="expert pass-through to TRL's SFTConfig (checked against its fields)"
    )
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, raw: Any) -> Any:
        """`training:` with nothing (or only comments) under it means the defaults, not an error."""
        if isinstance(raw, dict):
            raw = {**raw, **{k: {} for k in ("training", "output", "chat") if k in raw and raw[k] is None}}
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        problems = []
        training, has_eval = self.training, self.has_eval
        if training.packing and not training.padding_free:
            problems.append("training.packing needs training.padding_free: true (bins are padding-free rows)")
        if training.early_stopping and not has_eval:
            problems.append("training.early_stopping needs eval data: set data.eval_path or data.eval_fraction")
        if training.early_stopping and training.save_steps and training.eval_steps:
            if training.save_steps % training.eval_steps:
                problems.append(
                    f"training.save_steps ({training.save_steps}) must be a multiple of training.eval_steps "
                    f"({training.eval_steps}) for early stopping to restore the best checkpoint"
                )
        if training.eval_steps and not has_eval:
            problems.append("training.eval_steps is set but there is no eval data (data.eval_path/eval_fraction)")
        if any(s.format == "messages" for s in self.data.source_entries()) and self.template != "chat":
            problems.append("data.format messages needs template: chat")
        if training.early_stopping:
            problems += self._metric_problems(training.early_stopping.metric)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _metric_problems(self, metric: str) -> list[str]:
        """A per-source eval loss must name a source that has eval data."""
        match = re.fullmatch(r"eval_(.+)_loss", metric)
        if not match:
            return []
        labels = [label for label, source in self.sources() if source.has_eval] if len(self.sources()) > 1 else []
        if match.group(1) in labels:
            return []
        choices = ", ".join(["eval_loss", *(f"eval_{label}_loss" for label in labels)])
        return [f"training.early_stopping.metric: {metric!r} names no source with eval data; choose {choices}"]

    def sources(self) -> list[tuple[str, Recipe]]:
        """Every data source as (label, a one-source recipe): the one-source recipe reads, encodes and caches
        that source alone, so a source's weight or the other sources never change its prepared data."""
        data = self.data
        shared = {"on_bad_row": data.on_bad_row, "cache_dir": data.cache_dir, "num_proc": data.num_proc}
        return [
            (
                entry.label or entry.default_label,
                self.model_copy(update={"data": DataSection(**{k: getattr(entry, k) for k in SOURCE_KEYS}, **shared)}),
            )
            for entry in data.source_entries()
        ]

    @property
    def mixed(self) -> bool:
        """Several sources (`data.sources`), as opposed to the one-source `data.path`."""
        return bool(self.data.sources)

    @property
    def encoding(self) -> EncodingSpec:
        """The recipe's train/inference contract."""
        return EncodingSpec(**{name: getattr(self, name) for name in EncodingSpec.model_fields})

    @classmethod
    def from_encoding(cls, encoding: EncodingSpec, model: ModelSection, data: dict) -> Recipe:
        """A recipe that renders and encodes as `encoding` does, over other data (eval, export checks)."""
        return cls(model=model, data=DataSection(**data), **dict(encoding))

    @property
    def learning_rate(self) -> float:
        """The learning rate in force: the recipe's, else the default for full or LoRA training."""
        if self.training.learning_rate is not None:
            return self.training.learning_rate
        return LORA_LR if self.lora else FULL_LR

    @property
    def has_eval(self) -> bool:
        return any(s.eval_path or s.eval_fraction for s in self.data.source_entries())

    @property
    def eval_steps(self) -> int | None:
        return self.training.eval_steps or (50 if self.has_eval else None)

    @property
    def save_steps(self) -> int:
        return self.training.save_steps or self.eval_steps or 500

    def summary(self) -> str:
        """One line a user can check at a glance."""
        template = self.template if isinstance(self.template, str) else "custom"
        method = f"LoRA r={self.lora.r}" if self.lora else "full fine-tuning"
        length = f"{self.training.max_steps} steps" if self.training.max_steps else f"{self.training.epochs:g} epochs"
        return (
            f"model {self.model.name} | data {self._data_summary()} | template {template} | "
            f"{self.loss} loss | max_length {self.max_length} | {method} | lr {self.learning_rate:g} | {length}"
        )

    def _data_summary(self) -> str:
        if not self.mixed:
            return f"{self.data.path} ({self.data.format or 'auto'})"
        entries = self.data.sources
        shares = [f"{s.label or s.default_label}" + (f" {s.weight:g}" if s.weight else "") for s in entries]
        return f"{len(entries)} sources ({', '.join(shares)})"


class LoadedRecipe(typing.NamedTuple):
    """A validated recipe and where it came from (relative paths in it are already resolved)."""

    recipe: Recipe
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem


def _section_fields(loc: tuple) -> list[str]:
    """Field names allowed at a location in the schema (for did-you-mean)."""
    model: type[BaseModel] = Recipe
    for part in (p for p in loc if not isinstance(p, int)):  # a list index keeps the list's item model
        field = model.model_fields.get(part)
        if field is None:
            return []
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        if part == "template":
            candidates.append(CustomTemplate)
        submodels = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not submodels:
            return []
        model = submodels[0]
    return list(model.model_fields)


def _describe(error: dict, lines: dict, touched: set, source: str) -> str:
    # the template union tags its branches; a user knows the key as plain `template`
    loc = tuple(p for i, p in enumerate(error["loc"]) if not (i == 1 and error["loc"][0] == "template"))
    key = ".".join(map(str, loc)) or "(top level)"
    where = ""
    for n in range(len(loc), -1, -1):
        if loc[:n] in touched:
            where = " (from --set)"
            break
        if loc[:n] in lines:
            where = f" ({source} line {lines[loc[:n]]})"
            break
    if error["type"] == "extra_forbidden":
        allowed = _section_fields(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        tip = f"; did you mean '{guess[0]}'?" if guess else (f"; allowed: {', '.join(allowed)}" if allowed else "")
        return f"{key}{where}: unknown key{tip}"
    if error["type"] == "missing":
        return f"{key}{where}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("value_error",) or not loc:
        return f"{key}{where}: {message}" if loc else message
    return f"{key}{where}: {message} (got {error['input']!r})"


def _resolve_local(base: Path, value: str | None, suffixes: tuple[str, ...]) -> str | None:
    """A relative local path resolves against the recipe's folder; a hub id is left as it is."""
    if value is None:
        return None
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    looks_local = value.startswith((".", "/", "~")) or value.endswith(suffixes) or candidate.exists()
    return str(candidate.resolve()) if looks_local else value


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_files: bool = True) -> LoadedRecipe:
    """Read, override and validate a recipe; raise RecipeError listing every problem with its key and line."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise RecipeError(source, ["file not found"], hint="`sft init` writes a starter recipe")
    text = recipe_text(path)
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(source, [f"{line}YAML syntax error: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(source, ["the top level must be a mapping of sections (model:, data:, ...)"])
    lines, problems = key_lines(node) if node is not None else ({}, [])
    touched = apply_overrides(raw, overrides or [])
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems += [_describe(e, lines, touched, path.name) for e in exc.errors()]
        raise RecipeError(source, problems, hint="`sft init` writes a commented recipe with every key") from None
    if problems:
        raise RecipeError(source, problems)
    recipe = _resolve_paths(recipe, path.parent.resolve())
    if check_files:
        _check_files(recipe, source)
    return LoadedRecipe(recipe, path)


def _resolve_source(base: Path, source):
    """A source's (or the short form's) data paths, resolved against the recipe's folder; a label defaults to
    the stem of the path as written."""
    update = {key: _resolve_local(base, getattr(source, key), DATA_SUFFIXES) for key in ("path", "eval_path")}
    if isinstance(source, SourceSection) and not source.label:
        update["label"] = source.default_label
    return source.model_copy(update=update)


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    data = _resolve_source(base, recipe.data).model_copy(
        update={
            "sources": [_resolve_source(base, s) for s in recipe.data.sources],
            "cache_dir": str((base / Path(recipe.data.cache_dir).expanduser()).resolve())
            if recipe.data.cache_dir
            else None,
        }
    )
    model = recipe.model.model_copy(update={"name": _resolve_local(base, recipe.model.name, (".gguf",))})
    output = recipe.output
    if output.dir:
        output = output.model_copy(update={"dir": str((base / Path(output.dir).expanduser()).resolve())})
    return recipe.model_copy(update={"data": data, "model": model, "output": output})


def _check_files(recipe: Recipe, source: str) -> None:
    """Local files the recipe names must exist; hub ids cannot be checked offline and are left alone."""
    problems = []
    names = [("model.name", recipe.model.name)]
    for n, entry in enumerate(recipe.data.source_entries()):
        prefix = f"data.sources[{n}]." if recipe.mixed else "data."
        names += [(prefix + "path", entry.path), (prefix + "eval_path", entry.eval_path)]
    for key, value in names:
        if value and Path(value).is_absolute() and not Path(value).exists():
            problems.append(f"{key}: not found: {value}")
    if recipe.output.dir and Path(recipe.output.dir).exists() and not Path(recipe.output.dir).is_dir():
        problems.append(f"output.dir: {recipe.output.dir} is a file, not a folder")
    if problems:
        raise RecipeError(source, problems)
