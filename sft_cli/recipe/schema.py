"""The recipe: the train/inference contract (EncodingSpec), the whole Recipe with its checks across sections
(sections: sections.py), and loading a file: YAML with line numbers, `--set` overrides, every problem
reported at once."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from sft_cli.errors import RecipeError
from sft_cli.recipe.sections import (
    DATA_SUFFIXES,
    FULL_LR,
    LORA_LR,
    SOURCE_KEYS,
    ChatSection,
    CustomTemplate,
    DataSection,
    LoraSection,
    ModelSection,
    OutputSection,
    Section,
    SourceSection,
    TemplateSpec,
    TrainingSection,
)
from sft_cli.recipe.yaml_lines import apply_overrides, check_aliases, key_lines, recipe_text


class EncodingSpec(Section):
    """The train/inference contract: every recipe choice that decides how a row becomes prompt ids, answer ids and
    trained tokens. Training records it in the run folder (runs/record.py); preview, the prepared-data fingerprint,
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

    @model_validator(mode="before")
    @classmethod
    def _plain_text_packs(cls, raw: Any) -> Any:
        """Plain text (`format: text`) packs its windows by default: documents run into each other, EOS between."""
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
            return raw
        data = raw["data"]
        entries = [data, *(s for s in data.get("sources") or [] if isinstance(s, dict))]
        training = raw.get("training") or {}
        if any(e.get("format") == "text" for e in entries) and isinstance(training, dict):
            if "packing" not in training:
                raw = {**raw, "training": {**training, "packing": True}}
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
        if training.eval_generate and (not has_eval or self.loss != "masked"):
            problems.append("training.eval_generate needs eval data and loss: masked (it answers the eval prompts)")
        if training.eval_steps and not has_eval:
            problems.append("training.eval_steps is set but there is no eval data (data.eval_path/eval_fraction)")
        chats = [s.format for s in self.data.source_entries() if s.format in ("messages", "sharegpt")]
        if chats and self.template != "chat":
            problems.append(f"data.format {chats[0]} needs template: chat")
        if training.early_stopping:
            problems += self._metric_problems(training.early_stopping.metric)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _metric_problems(self, metric: str) -> list[str]:
        """The metric must be one the run logs at every evaluation (else Trainer fails with a KeyError after the
        first one): eval_loss, or eval_<label>_loss of a source with eval data, and with training.eval_generate the
        same for exact_match and contains. Trainer reads `loss` as `eval_loss`."""
        labels = [label for label, source in self.sources() if source.has_eval] if len(self.sources()) > 1 else []
        scores = ("loss", "exact_match", "contains") if self.training.eval_generate else ("loss",)
        logged = [f"eval_{score}" for score in scores]
        logged += [f"eval_{label}_{score}" for label in labels for score in scores]
        if (metric if metric.startswith("eval_") else f"eval_{metric}") in logged:
            return []
        close = difflib.get_close_matches(metric, logged, n=1, cutoff=0.6)
        guess = f"did you mean {close[0]!r}? " if close else ""
        return [
            f"training.early_stopping.metric: {metric!r} is not logged by this run; {guess}choose {', '.join(logged)}"
        ]

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
        check_aliases(node, source)
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
