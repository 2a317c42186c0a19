"""`--format hf`: a standalone model folder that transformers, vLLM and TGI load as it is. LoRA weights merged;
the tokenizer carries the trained prompt format as its `chat_template`; `generation_config.json` lists every
stop id; the run record is kept beside them so `sft generate` and `sft eval` read the folder as a run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sft_cli.encoding.encode import special_prefix
from sft_cli.export.check import CheckReport, check_hf
from sft_cli.export.job import ExportJob
from sft_cli.export.prompt_format import jinja_chat_template
from sft_cli.runs.generate import LoadedRun, pad_id, stop_ids
from sft_cli.runs.record import write_record

FLOAT_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def exported_chat_template(run: LoadedRun) -> str:
    """The run's prompt format as a Jinja chat template (BOS written where sft's prompts start with it)."""
    bos = bool(special_prefix(run.tokenizer, "", run.template))
    return jinja_chat_template(run.record.encoding, run.tokenizer.chat_template, bos)


def write_hf_folder(run: LoadedRun, target: Path, dtype: str | None, source: Path) -> Path:
    """Write the merged model, tokenizer, generation config and run record into `target` (which must not exist
    yet; the caller moves it into place)."""
    import torch

    model = run.model.merge_and_unload() if hasattr(run.model, "merge_and_unload") else run.model
    if dtype is not None:
        model = model.to(getattr(torch, FLOAT_DTYPES[dtype]))
    stops = stop_ids(run)
    generation = model.generation_config
    generation.eos_token_id = stops[0] if len(stops) == 1 else stops
    generation.pad_token_id = pad_id(run.tokenizer)
    run.tokenizer.chat_template = exported_chat_template(run)
    model.save_pretrained(target)
    run.tokenizer.save_pretrained(target)
    write_record(target, replace(run.record, lora=False, merged_from=str(source)))
    return target


def export_hf(job: ExportJob) -> CheckReport | None:
    job.progress.note("writing the merged model, tokenizer (with its chat template) and generation config")
    write_hf_folder(job.run, job.folder, job.dtype, job.run_dir)
    if not job.rows:
        return None
    job.progress.note(f"checking {len(job.rows)} rows through transformers")
    return check_hf(job.run, job.folder, job.rows, job.sft, job.max_new_tokens)
