"""One export as it is written, and what a format is: each format module writes and checks a job; the exporter
finds it in its registry (exporter.FORMATS)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sft_cli.progress import Progress
from sft_cli.runs.generate import LoadedRun

if TYPE_CHECKING:
    from sft_cli.data.rows import Row
    from sft_cli.export.check import CheckReport


@dataclass
class ExportJob:
    """The loaded run, the folder its files go to (aside, moved into place when done), and the rows and sft's
    (prompt ids, greedy ids) for each that the check compares."""

    run: LoadedRun
    run_dir: Path
    dtype: str | None
    folder: Path
    rows: list[Row]
    sft: list[tuple[list[int], list[int]]]
    max_new_tokens: int
    progress: Progress
    facts: dict = field(default_factory=dict)  # what export.json records besides the check


@dataclass(frozen=True)
class Format:
    name: str
    dtypes: tuple[str, ...]
    default_dtype: str | None  # None: as trained
    needs_llama_cpp: bool
    write: Callable[[ExportJob], CheckReport | None]  # writes job.folder, returns the check (None: no rows)
