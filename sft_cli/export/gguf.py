"""`--format gguf`: the merged model written as an f32 HF folder, converted by llama.cpp's own converter to the
chosen type, and checked through llama.cpp."""

from __future__ import annotations

import shutil
from pathlib import Path

from sft_cli.export.check import CheckReport, check_gguf
from sft_cli.export.hf import write_hf_folder
from sft_cli.export.job import ExportJob
from sft_cli.export.llama_cpp import add_stop_tokens, bindings_version, convert
from sft_cli.runs.generate import stop_ids


def gguf_path(job: ExportJob) -> Path:
    return job.folder / f"{job.run_dir.name}-{job.dtype}.gguf"


def export_gguf(job: ExportJob) -> CheckReport | None:
    hf_copy = job.folder / "hf-f32"
    job.progress.note("writing the merged model as an f32 HF folder for llama.cpp's converter")
    write_hf_folder(job.run, hf_copy, "f32", job.run_dir)
    converter = f"llama.cpp from llama-cpp-python {bindings_version()}"
    job.progress.note(f"converting to GGUF {job.dtype} with the converter of {converter}")
    convert(hf_copy, gguf_path(job), job.dtype)
    shutil.rmtree(hf_copy)
    job.facts["converter"] = converter
    written = add_stop_tokens(gguf_path(job), stop_ids(job.run))
    job.facts["stop_tokens_written"] = job.run.tokenizer.convert_ids_to_tokens(written)
    if not job.rows:
        return None
    job.progress.note(f"checking {len(job.rows)} rows through llama.cpp")
    return check_gguf(job.run, gguf_path(job), job.rows, job.sft, job.max_new_tokens)
