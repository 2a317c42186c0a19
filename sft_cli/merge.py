"""`sft merge`: fold a LoRA adapter into its base model and write a standard model folder."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from sft_cli.errors import SftError
from sft_cli.generate import load_run
from sft_cli.run_record import read_record, write_record


def merge_run(run_dir: Path, output: Path, overwrite: bool = False) -> Path:
    """Write base + adapter, merged, to `output` (aside first, then moved into place)."""
    run_dir, output = Path(run_dir), Path(output)
    record = read_record(run_dir)
    if not (run_dir / "adapter_config.json").exists():
        raise SftError(
            f"{run_dir} is not a LoRA run: its model is already a full model",
            hint="load it directly; there is nothing to merge",
        )
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise SftError(f"{output} already exists", hint="pick another --output, or pass --overwrite")
    run = load_run(run_dir)
    merged = run.model.merge_and_unload()
    aside = output.with_name(output.name + ".partial")
    shutil.rmtree(aside, ignore_errors=True)
    merged.save_pretrained(aside)
    run.tokenizer.save_pretrained(aside)
    write_record(aside, replace(record, lora=False, merged_from=str(run_dir)))
    if output.exists():
        shutil.rmtree(output)
    os.replace(aside, output)
    return output
