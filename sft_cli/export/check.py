"""The round-trip check of an export: for rows of the run's own data, (1) the export's own prompt path gives the
ids sft trains and generates with, (2) greedy generation through the export gives sft's tokens, (3) the export
stops on the stop tokens the model was trained to end with.

The export's prompt path is what a user of that runtime gets: for an HF folder, its tokenizer's
`apply_chat_template`; for a GGUF file, llama.cpp's tokenizer with the chat template from the file's metadata,
as llama-cpp-python's chat completion applies it. Prompt ids or stops that differ fail the export; generations are
compared and reported (a GGUF computes in llama.cpp's own kernels, and a 16-bit or 8-bit file rounds weights, so a
near tie can break the other way: the report gives the first diverging position).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from sft_cli.data.rows import Row, load_rows
from sft_cli.encoding.chat import template_messages
from sft_cli.encoding.templates import chat_row
from sft_cli.errors import SftError
from sft_cli.export.prompt_format import user_message
from sft_cli.recipe.schema import load_recipe
from sft_cli.runs.evaluate import file_rows
from sft_cli.runs.generate import LoadedRun, Sampling, generate_ids, pad_id, prompt_token_ids, stop_ids
from sft_cli.runs.record import RECIPE_FILE


@dataclass
class RowCheck:
    row: int
    prompt_tokens: int
    prompt_ids_equal: bool
    prompt_first_difference: int | None
    sft_ids: list[int]
    export_ids: list[int]
    identical: bool
    first_divergence: int | None
    sft_stopped: bool
    export_stopped: bool
    stop_ok: bool
    error: str | None = None  # the export's prompt path refused the row (its template raised)


@dataclass
class CheckReport:
    """Every row's result and the stop tokens the export does not end on (trained ones only)."""

    runtime: str
    rows: list[RowCheck] = field(default_factory=list)
    stops_missing: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.stops_missing and all(r.prompt_ids_equal and r.stop_ok for r in self.rows)

    @property
    def first_failure(self) -> RowCheck | None:
        return next((r for r in self.rows if not (r.prompt_ids_equal and r.stop_ok)), None)

    def as_dict(self) -> dict:
        n = len(self.rows)
        return {
            "runtime": self.runtime,
            "passed": self.passed,
            "rows": n,
            "prompt_ids_equal": sum(r.prompt_ids_equal for r in self.rows),
            "identical_generations": sum(r.identical for r in self.rows),
            "stops_ok": sum(r.stop_ok for r in self.rows),
            "stops_missing": self.stops_missing,
            "per_row": [asdict(r) for r in self.rows],
        }


def check_rows(run_dir: Path, limit: int, data: Path | None = None) -> list[Row]:
    """The first `limit` rows of `data`, read as `sft eval` reads a file (held-out rows the run never saw), else of
    the run's eval split (else its train rows), from the data its recipe names."""
    if data is not None:
        return file_rows(Path(run_dir), Path(data), limit, "check")[1].rows
    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        raise SftError(f"{run_dir}: no {RECIPE_FILE} to find the rows to check with", hint="pass --no-check")
    recipe = load_recipe(path, check_files=False).recipe
    try:
        rows = load_rows(recipe, "eval" if recipe.has_eval else "train")
    except SftError as error:
        raise SftError(f"the check reads the run's data and cannot: {error.message}", hint="pass --no-check") from None
    return rows.rows[:limit]


def export_messages(run: LoadedRun, fields: dict) -> tuple[list[dict], list[dict] | None]:
    """The messages (and tools) a user of the export sends for a row: the chat before its last assistant turn, in
    the shape the model family's template reads (as sft passes it), or the instruction row as one user message."""
    if run.template != "chat":
        return [user_message(fields, run.template)], None
    chat = chat_row(fields)
    messages = template_messages(chat["messages"], run.tokenizer.chat_template or "", run.options)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return messages[:last], chat.get("tools")


def _first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def sft_answers(run: LoadedRun, rows: list[Row], max_new_tokens: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, greedy ids) per row as `sft generate` makes them, one row at a time."""
    sampling = Sampling(max_new_tokens=max_new_tokens)
    out = []
    for row in rows:
        prompt = prompt_token_ids(run, row.fields)
        out.append((prompt, generate_ids(run.model, [prompt], stop_ids(run), pad_id(run.tokenizer), sampling, 1)[0]))
    return out


def stops_right(generated: list[int], trained: set[int], is_stop) -> bool:
    """The export ends on a trained stop token when it writes one, and never runs past one."""
    if any(token in trained for token in generated[:-1]):
        return False
    return not generated or generated[-1] not in trained or is_stop(generated[-1])


def compare(
    row: Row, sft: tuple[list[int], list[int]], prompt: list[int], generated: list[int], trained: set[int], is_stop
) -> RowCheck:
    sft_prompt, sft_ids = sft
    difference = _first_difference(sft_prompt, prompt)
    divergence = _first_difference(sft_ids, generated)
    return RowCheck(
        row=row.number,
        prompt_tokens=len(sft_prompt),
        prompt_ids_equal=difference is None,
        prompt_first_difference=difference,
        sft_ids=sft_ids,
        export_ids=generated,
        identical=divergence is None,
        first_divergence=divergence,
        sft_stopped=bool(sft_ids) and sft_ids[-1] in trained,
        export_stopped=bool(generated) and is_stop(generated[-1]),
        stop_ok=stops_right(generated, trained, is_stop),
    )


def refused(row: Row, sft: tuple[list[int], list[int]], error: Exception) -> RowCheck:
    """A row whose prompt the export's template would not render."""
    sft_prompt, sft_ids = sft
    reason = f"{type(error).__name__}: {error}"
    return RowCheck(row.number, len(sft_prompt), False, 0, sft_ids, [], False, 0, False, False, True, reason)


def check_hf(run: LoadedRun, folder: Path, rows: list[Row], sft: list, max_new_tokens: int) -> CheckReport:
    """The HF folder through transformers alone: its tokenizer's chat template and its generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    eos = model.generation_config.eos_token_id
    stops = [eos] if isinstance(eos, int) else list(eos or [])
    trained = set(stop_ids(run))
    missing = [run.tokenizer.convert_ids_to_tokens(t) for t in sorted(trained - set(stops))]
    report = CheckReport("transformers", stops_missing=missing)
    sampling = Sampling(max_new_tokens=max_new_tokens)
    for row, answer in zip(rows, sft):
        messages, tools = export_messages(run, row.fields)
        try:
            prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, return_dict=False)
        except Exception as error:  # the template's own raise_exception, or a Jinja error: the row fails, named
            report.rows.append(refused(row, answer, error))
            continue
        generated = generate_ids(model, [list(prompt)], stops, pad_id(tokenizer), sampling, 1)[0]
        report.rows.append(compare(row, answer, list(prompt), generated, trained, lambda t: t in stops))
    return report


def check_gguf(run: LoadedRun, path: Path, rows: list[Row], sft: list, max_new_tokens: int) -> CheckReport:
    """The GGUF file through llama.cpp: its tokenizer, its chat template metadata, its end-of-generation set."""
    from sft_cli.export.llama_cpp import GgufModel

    longest = max((len(prompt) + len(ids) for prompt, ids in sft), default=0)
    gguf = GgufModel(path, context=max(2048, longest + max_new_tokens + 64))  # the longest chat fits
    trained = set(stop_ids(run))
    missing = [run.tokenizer.convert_ids_to_tokens(t) for t in sorted(trained) if not gguf.is_stop(t)]
    report = CheckReport("llama.cpp", stops_missing=missing)
    for row, answer in zip(rows, sft):
        messages, tools = export_messages(run, row.fields)
        try:
            prompt = gguf.chat_prompt_ids(messages, tools)
        except Exception as error:  # as for HF: the row fails, named
            report.rows.append(refused(row, answer, error))
            continue
        report.rows.append(compare(row, answer, prompt, gguf.greedy(prompt, max_new_tokens), trained, gguf.is_stop))
    return report
