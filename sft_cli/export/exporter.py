"""Export a run folder: merge LoRA, write the format, check it, and move it into place (as `NAME.unverified`
when the check fails). The run folder is never changed; an existing output is replaced only with `overwrite`."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sft_cli.errors import SftError
from sft_cli.export.check import CheckReport, check_rows, sft_answers
from sft_cli.export.gguf import export_gguf
from sft_cli.export.hf import FLOAT_DTYPES, export_hf
from sft_cli.export.job import ExportJob, Format
from sft_cli.export.llama_cpp import OUTTYPES, check_export_extra
from sft_cli.export.ollama import export_ollama
from sft_cli.folders import building, guard_output
from sft_cli.progress import Progress
from sft_cli.runs.generate import load_run, stop_ids
from sft_cli.runs.record import TEMPLATE_FILE, read_record

FORMATS = {
    f.name: f
    for f in (
        Format("hf", tuple(FLOAT_DTYPES), None, False, export_hf),
        Format("gguf", OUTTYPES, "f16", True, export_gguf),
        Format("ollama", OUTTYPES, "f16", True, export_ollama),
    )
}
REPORT_FILE = "export.json"


@dataclass
class ExportResult:
    folder: Path
    format: str
    dtype: str | None
    files: list[str]
    seconds: float
    check: CheckReport | None = None
    facts: dict = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.check is None or self.check.passed

    def as_dict(self) -> dict:
        return {
            "folder": str(self.folder),
            "format": self.format,
            "dtype": self.dtype,
            "files": self.files,
            "seconds": round(self.seconds, 1),
            **self.facts,
            "check": self.check.as_dict() if self.check else None,
        }


def check_run_folder(run_dir: Path) -> None:
    """A run folder with a final model: its record, its config (or adapter config) and weights."""
    read_record(run_dir)
    has_config = (run_dir / "config.json").is_file() or (run_dir / "adapter_config.json").is_file()
    if not has_config or not any(run_dir.glob("*.safetensors")):
        raise SftError(
            f"{run_dir}: no final model (config and .safetensors weights) beside {TEMPLATE_FILE}",
            hint="an interrupted run keeps checkpoints only: finish it with `sft train RECIPE --resume`",
        )


def default_output(run_dir: Path, fmt: str, dtype: str | None) -> Path:
    return run_dir.parent / f"{run_dir.name}-{fmt}{'-' + dtype if dtype else ''}"


def export_run(
    run_dir: Path,
    fmt: str,
    output: Path | None = None,
    dtype: str | None = None,
    *,
    overwrite: bool = False,
    check: int = 16,
    check_data: Path | None = None,
    max_new_tokens: int = 32,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a run; `check` rows (of `check_data`, else the run's own eval rows) are compared (0: no check)."""
    progress = progress or Progress()
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise SftError(f"--format {fmt}: choose {' | '.join(FORMATS)}")
    spec = FORMATS[fmt]
    if dtype not in (None, *spec.dtypes):
        raise SftError(f"--dtype {dtype}: --format {fmt} writes {', '.join(spec.dtypes)}")
    check_run_folder(run_dir)
    if spec.needs_llama_cpp:
        check_export_extra()  # fails now, with the install command, rather than after the merge
    dtype = dtype or spec.default_dtype
    output = Path(output) if output else default_output(run_dir, fmt, dtype)
    unverified = output.with_name(output.name + ".unverified")
    for existing in (output, unverified):
        guard_output(
            existing,
            option="--output",
            overwrite=overwrite,
            written_by_sft=lambda folder: (folder / REPORT_FILE).is_file(),
            what="an earlier export (a folder with export.json)",
            keep=[run_dir],
        )
    started = time.perf_counter()
    with building(output, "exporting") as aside:  # a folder sft cannot write to fails here, before the model loads
        rows = check_rows(run_dir, check, check_data) if check else []
        progress.note(f"loading {run_dir}")
        run = load_run(run_dir)
        sft = sft_answers(run, rows, max_new_tokens) if rows else []
        stops = run.tokenizer.convert_ids_to_tokens(stop_ids(run))
        job = ExportJob(run, run_dir, dtype, aside, rows, sft, max_new_tokens, progress, {"stop_tokens": stops})
        if rows:
            job.facts["check_data"] = str(check_data) if check_data else "the run's own data"
        if run.record.quantization_note:
            job.facts["quantized_base"] = run.record.quantized_base
            progress.note(f"note: {run.record.quantization_note}")
        report = spec.write(job)
    files = sorted([*(p.name for p in aside.iterdir()), REPORT_FILE])
    result = ExportResult(output, fmt, dtype, files, time.perf_counter() - started, report, job.facts)
    if not result.verified:
        result.folder = unverified
    (aside / REPORT_FILE).write_text(json.dumps({"run": str(run_dir), **result.as_dict()}, indent=2), "utf-8")
    for existing in (output, unverified):
        shutil.rmtree(existing, ignore_errors=True)
    os.replace(aside, result.folder)
    return result
