"""The sections of a recipe (model, data and its sources, LoRA, training, chat, output) as pydantic models:
unknown keys are errors, and each field's description is the comment `sft init` writes beside it."""

from __future__ import annotations

import difflib
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

TEMPLATE_NAMES = ("alpaca", "human_assistant", "special_tokens", "chat")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
FULL_LR, LORA_LR = 2.0e-5, 2.0e-4


class Section(BaseModel):
    """A recipe section: unknown keys are errors, values are frozen once validated; inf and nan are no number a
    recipe means (`1e400` reads as inf)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSection(Section):
    name: str = Field(description="hub id, local folder, or a local .gguf file")
    gguf_file: str | None = Field(None, description="file name inside `name` when it is a folder holding a .gguf")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    trust_remote_code: bool = Field(False, description="run model code shipped with the checkpoint")


class CustomTemplate(Section):
    prompt: str = Field(description="prompt format with {field} placeholders, e.g. 'Q: {instruction}\\nA: '")
    response: str = Field("{output}", description="response format (trained under masked loss); EOS follows")
    special_tokens: list[str] = Field(default_factory=list, description="tokens to add to the tokenizer")

    def fields(self) -> set[str]:
        """The {field} names the template uses."""
        parsed = (part for fmt in (self.prompt, self.response) for part in string.Formatter().parse(fmt))
        return {field for _, field, _, _ in parsed if field is not None}


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


SOURCE_KEYS = ("path", "name", "revision", "format", "columns", "roles", "split", "eval_path", "eval_fraction", "limit")
DataFormat = Literal["alpaca", "prompt_completion", "messages", "sharegpt", "text"]
ChatRole = Literal["system", "user", "assistant", "tool", "tool_call"]
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"


class SourceFields(Section):
    """Where one source's rows come from and how its columns read: the keys a single `data.path` takes, and
    each entry of `data.sources`."""

    path: str = Field(
        description=".jsonl .json .csv .parquet .txt, a folder of them, a save_to_disk folder, or a hub id"
    )
    name: str | None = Field(None, description="hub dataset configuration (subset) name")
    revision: str | None = Field(None, description="hub dataset revision (branch, tag or commit); recorded")
    format: DataFormat | None = Field(
        None,
        description="alpaca | prompt_completion | messages | sharegpt | text; detected from the columns when omitted",
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="map the format's field names to your columns, e.g. {output: answer}"
    )
    roles: dict[str, ChatRole] = Field(
        default_factory=dict,
        description="map a chat's own role names to sft's, e.g. {bot: assistant} (ShareGPT's are known)",
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
    format: DataFormat | None = SourceFields.model_fields["format"]
    columns: dict[str, str] = SourceFields.model_fields["columns"]
    roles: dict[str, ChatRole] = SourceFields.model_fields["roles"]
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


class EvalGenerate(Section):
    rows: int = Field(32, ge=1, description="eval rows answered at every evaluation (greedy)")
    max_new_tokens: int = Field(32, ge=1, description="longest answer generated")


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
    eval_generate: EvalGenerate | None = Field(
        None, description="at every evaluation, answer eval rows and log eval_exact_match and eval_contains"
    )
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
