"""`--format ollama`: the GGUF file and a Modelfile that gives `ollama create` the trained prompt format and stops."""

from __future__ import annotations

import json
from pathlib import Path

from sft_cli.export.check import CheckReport
from sft_cli.export.gguf import export_gguf, gguf_path
from sft_cli.export.job import ExportJob
from sft_cli.export.prompt_format import ollama_template
from sft_cli.runs.generate import LoadedRun


def modelfile(gguf_name: str, run: LoadedRun, stops: list[str]) -> str:
    """FROM the GGUF; TEMPLATE for the instruction templates (a chat-template run's GGUF carries its template, which
    Ollama reads from the metadata); PARAMETER stop for every stop token."""
    lines = [
        f"# written by `sft export --format ollama`: ollama create NAME -f {Path('Modelfile')}",
        f"FROM ./{gguf_name}",
    ]
    template = ollama_template(run.record.encoding, run.tokenizer.eos_token or "")
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER stop {json.dumps(token)}" for token in stops]
    return "\n".join(lines) + "\n"


def export_ollama(job: ExportJob) -> CheckReport | None:
    """The GGUF export (checked through llama.cpp: Ollama runs llama.cpp) and its Modelfile."""
    report = export_gguf(job)
    text = modelfile(gguf_path(job).name, job.run, job.facts["stop_tokens"])
    (job.folder / "Modelfile").write_text(text, encoding="utf-8")
    return report
