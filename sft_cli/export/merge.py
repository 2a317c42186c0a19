"""`sft merge`: fold a LoRA adapter into its base model and write a standard model folder, with the same contract
as `sft export --format hf` (the trained prompt format as its chat template, every stop id in its generation
config)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sft_cli.errors import SftError
from sft_cli.export.hf import write_hf_folder
from sft_cli.folders import building, guard_output
from sft_cli.runs.generate import load_run
from sft_cli.runs.record import read_record


def merge_run(run_dir: Path, output: Path, overwrite: bool = False) -> Path:
    """Write base + adapter, merged, to `output` (aside first, then moved into place)."""
    run_dir, output = Path(run_dir), Path(output)
    if not read_record(run_dir).lora or not (run_dir / "adapter_config.json").exists():
        raise SftError(
            f"{run_dir} is not a LoRA run: its model is already a full model",
            hint="load it directly, or `sft export --format hf` for a standalone folder",
        )
    guard_output(
        output,
        option="--output",
        overwrite=overwrite,
        written_by_sft=merged_folder,
        what="an earlier merged model",
        keep=[run_dir],
    )
    with building(output, "merging") as aside:  # a folder sft cannot write to fails here, before the model loads
        write_hf_folder(load_run(run_dir), aside, None, run_dir)
    if output.exists():
        shutil.rmtree(output)
    os.replace(aside, output)
    return output


def merged_folder(folder: Path) -> bool:
    """A folder `sft merge` (or `sft export --format hf`) wrote: its record names the run it was merged from."""
    try:
        return read_record(folder).merged_from is not None
    except SftError:
        return False
