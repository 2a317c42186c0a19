"""The run record: what a run folder holds besides the weights, under which file names, and the one way to write
and read the train/inference contract (`sft_template.json`) that generate, eval, merge and export rely on.

The contract file carries a format version. Version 1 (no `format` key) kept the contract fields flat beside the
rest; it is still read, so run folders trained by earlier releases keep working.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sft_cli.errors import SftError
from sft_cli.recipe.schema import EncodingSpec
from sft_cli.recipe.sections import ModelSection

TEMPLATE_FILE, RUN_FILE, METRICS_FILE = "sft_template.json", "run.json", "metrics.jsonl"
PLOT_FILE, RECIPE_FILE, CHECKPOINTS, LOCK_FILE = "loss.png", "recipe.yaml", "checkpoints", ".lock"
FORMAT = 2
# version 1 wrote the contract fields flat; on_overflow was not recorded (generation never truncates)
_V1_FIELDS = ("template", "loss", "loss_turns", "max_length", "special_tokens_in_text", "chat")


@dataclass(frozen=True)
class RunRecord:
    """The contract a model was trained under, the stop tokens it learned, and where its base model lives."""

    encoding: EncodingSpec
    stop_tokens: tuple[str, ...]
    base_model: ModelSection
    lora: bool = False
    merged_from: str | None = None
    quantized_base: str | None = None  # "nf4": the adapter trained over a 4-bit base (QLoRA)

    @property
    def quantization_note(self) -> str | None:
        """What merge and export say of a QLoRA adapter: they apply it to the base in full precision."""
        if not self.quantized_base:
            return None
        return (
            f"the adapter was trained over a 4-bit ({self.quantized_base}) base; merged here into the base in full "
            "precision, so answers may differ slightly from the QLoRA model's"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "encoding": self.encoding.model_dump(mode="json"),
            "stop_tokens": list(self.stop_tokens),
            "base_model": self.base_model.model_dump(mode="json"),
            "lora": self.lora,
            "merged_from": self.merged_from,
            "quantized_base": self.quantized_base,
        }


def write_record(folder: Path, record: RunRecord) -> Path:
    """Write the contract file into a model folder (a run, a merged model, an export)."""
    path = Path(folder) / TEMPLATE_FILE
    path.write_text(json.dumps(record.as_dict(), indent=2), encoding="utf-8")
    return path


def read_record(folder: Path) -> RunRecord:
    """The contract of a model folder written by `sft train`, `sft merge` or `sft export`, any format version."""
    path = Path(folder) / TEMPLATE_FILE
    if not path.is_file():
        raise SftError(
            f"{folder}: not an sft run folder (no {TEMPLATE_FILE})",
            hint="give a folder written by `sft train`, `sft merge` or `sft export --format hf`",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("format", 1)
        if version > FORMAT:
            raise SftError(
                f"{path}: written by a newer sft (format {version}; this one reads up to {FORMAT})",
                hint="upgrade sft: pip install -U sft-cli",
            )
        encoding = data["encoding"] if version >= 2 else {k: data[k] for k in _V1_FIELDS if k in data}
        return RunRecord(
            EncodingSpec.model_validate(encoding),
            tuple(data.get("stop_tokens") or ()),
            ModelSection.model_validate(data["base_model"]),
            bool(data.get("lora")),
            data.get("merged_from"),
            data.get("quantized_base"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SftError(
            f"{path}: unreadable run record ({type(exc).__name__}: {exc})",
            hint="the file was edited or truncated; copy it from the run folder it came from",
        ) from None


def read_started_recipe(folder: Path) -> dict | None:
    """The resolved recipe a run started with (`recipe.yaml`), or None where the folder has none or it cannot be
    read (a merged or exported model folder, a file edited by hand)."""
    import yaml

    try:
        return yaml.safe_load((Path(folder) / RECIPE_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None


def read_run_facts(folder: Path) -> dict | None:
    """What `run.json` says of a finished or stopped run, or None where the folder has none or it cannot be read."""
    try:
        return json.loads((Path(folder) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
