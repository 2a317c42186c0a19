"""The commands on a run folder: generate, chat, eval, merge, export. app.py registers them (after the recipe
commands, so `sft --help` lists them in the order a user meets them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sft_cli.cli.common import err, out, quiet_libraries
from sft_cli.errors import SftError
from sft_cli.folders import check_writable, write_error

RunArg = typer.Argument(
    ..., help="A run folder written by `sft train` (or `sft merge`, `sft export --format hf`).", show_default=False
)
MaxNewOpt = typer.Option(128, "--max-new-tokens", min=1, help="Longest answer in tokens.")
TemperatureOpt = typer.Option(0.0, "--temperature", min=0.0, help="0 is greedy; above 0 samples.")
TopPOpt = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling share (with --temperature).")


def generate(
    run_dir: Path = RunArg,
    instruction: str | None = typer.Argument(None, help="The instruction (or use --file)."),
    input_text: str = typer.Option("", "--input", help="The input field, when the task has one."),
    file: Path | None = typer.Option(None, "--file", help="Rows (jsonl/json/csv) to answer, in the training format."),
    output: Path | None = typer.Option(None, "--output", "-o", help="With --file: write rows + `generated` here."),
    max_new_tokens: int = MaxNewOpt,
    temperature: float = TemperatureOpt,
    top_p: float = TopPOpt,
) -> None:
    """Answer with a trained model, prompted exactly as in training (same template, same tokenization)."""
    from sft_cli.data.rows import rows_to_answer
    from sft_cli.runs.generate import Sampling, load_run
    from sft_cli.runs.generate import generate as generate_answers

    if (instruction is None) == (file is None):
        raise SftError(
            "give an instruction or --file, not both", hint='sft generate RUN "Reverse the word." --input stone'
        )
    if output and output.exists():
        raise SftError(f"{output} already exists", hint="pick another --output")
    if output:
        check_writable(output.parent, "writing the answers")  # before the model loads and generates
    quiet_libraries()
    run = load_run(run_dir)
    sampling = Sampling(max_new_tokens, temperature, top_p)
    if instruction is not None:
        out.print(
            generate_answers(run, [{"instruction": instruction, "input": input_text}], sampling)[0],
            highlight=False,
            markup=False,
        )
        return
    records, rows = rows_to_answer(str(file))
    answers = generate_answers(run, rows, sampling)
    lines = [
        json.dumps({**record, "generated": answer}, ensure_ascii=False) for record, answer in zip(records, answers)
    ]
    if output:
        try:
            output.write_text("\n".join(lines) + "\n", encoding="utf-8")
        except OSError as error:
            output.unlink(missing_ok=True)
            raise write_error(output.parent, error, "writing the answers") or error from None
        out.print(f"wrote {len(lines)} rows to {output}")
    else:
        sys.stdout.write("\n".join(lines) + "\n")


def chat(
    run_dir: Path = RunArg,
    max_new_tokens: int = MaxNewOpt,
    temperature: float = TemperatureOpt,
    top_p: float = TopPOpt,
    system: str = typer.Option("", "--system", help="A system message (chat-template runs)."),
) -> None:
    """Talk to a trained model: multi-turn for chat-template runs, one instruction per line otherwise.
    /reset clears the history, /exit (or end of input) quits."""
    from sft_cli.runs.generate import Sampling, load_run
    from sft_cli.runs.generate import generate as generate_answers

    quiet_libraries()
    run = load_run(run_dir)
    sampling = Sampling(max_new_tokens, temperature, top_p)
    multi_turn = run.template == "chat"
    start = [{"role": "system", "content": system}] if system and multi_turn else []
    history = list(start)
    out.print(
        f"chatting with {run_dir} ({'multi-turn' if multi_turn else 'one instruction per line'}); /reset, /exit",
        highlight=False,
    )
    for text in stdin_lines():
        if text == "/exit":
            break
        if text == "/reset":
            history = list(start)
            continue
        if not text:
            continue
        if multi_turn:
            history.append({"role": "user", "content": text})
            row = {"messages": history + [{"role": "assistant", "content": ""}]}
        else:
            row = {"instruction": text, "input": ""}
        answer = generate_answers(run, [row], sampling)[0]
        if multi_turn:
            history.append({"role": "assistant", "content": answer})
        out.print(f"> {answer}", highlight=False, markup=False)


def stdin_lines():
    """Standard input's lines, stripped; a closed stdin is the end of input, a line that is not UTF-8 one error."""
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    if stream is None:
        return
    for number, line in enumerate(stream, 1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SftError(
                    f"stdin line {number}: not UTF-8 text (byte 0x{line[exc.start]:02x} at column {exc.start + 1})",
                    hint="send UTF-8 text (`iconv -t UTF-8` converts it)",
                ) from None
        yield line.strip()


def eval(
    run_dir: Path = RunArg,
    data: list[Path] = typer.Option(
        [], "--data", help="Rows with answers (same format as training); repeat for per-file scores."
    ),
    tasks: list[str] = typer.Option(
        [],
        "--tasks",
        help="lm-evaluation-harness tasks, comma-separated: lm-eval's names (ifeval, gsm8k, mmlu, ...) or task YAML "
        "files; needs the eval extra. Prompted through the run's template (see --prompt).",
    ),
    base: bool = typer.Option(False, "--base", help="Also evaluate the untouched base model, side by side."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N rows (of each task)."),
    num_fewshot: int | None = typer.Option(
        None, "--num-fewshot", min=0, help="With --tasks: examples before each question (default: each task's own)."
    ),
    prompt: str = typer.Option(
        "run",
        "--prompt",
        help="With --tasks: run (each request through the run's template, as sft generate prompts) or raw (the "
        "task's text as it is, as base models are benchmarked); --base is prompted the same way.",
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Longest generated answer (--data)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
) -> None:
    """Answer-token loss and perplexity, exact match and containment on your rows (--data), overall and per `task`
    column; lm-evaluation-harness tasks (--tasks), with --base the forgetting report: each task's score, the base's,
    and the difference. --tasks results are kept in RUN/eval/ and sent to the run's trackers."""
    from sft_cli.cli.view import ProgressView
    from sft_cli.runs.harness import load_tasks, require_harness, split_tasks
    from sft_cli.runs.record import read_record

    names = split_tasks(tasks)
    if prompt not in ("run", "raw"):
        raise SftError(f"--prompt: expected run or raw, got {prompt!r}")
    if not data and not names:
        raise SftError("give --data (your rows) or --tasks (lm-eval tasks), or both", hint="sft eval --help")
    for path in data:
        if not path.exists():
            raise SftError(f"--data: not found: {path}")
    read_record(run_dir)  # a folder sft did not write is refused before anything loads
    quiet_libraries()
    tasks = None
    if names:
        require_harness()
        check_writable(run_dir, "keeping the results in the run folder")
        tasks = load_tasks(names)  # every task name and its data, before any model loads
    progress = ProgressView(err)
    document: dict = {}
    results = _eval_rows(run_dir, data, base, limit, max_new_tokens, progress) if data else []
    if results:
        document["results"] = [r.as_dict() for r in results]
    harness = _eval_tasks(run_dir, tasks, base, limit, num_fewshot, prompt, progress) if tasks else None
    if harness:
        document["harness"] = harness.as_dict()
    if as_json:
        sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
        return
    from sft_cli.cli.results_view import render_eval, render_harness

    if results:
        render_eval(out, results)
    if harness:
        render_harness(out, harness)


def _eval_rows(run_dir: Path, data: list[Path], base: bool, limit, max_new_tokens: int, progress) -> list:
    from sft_cli.runs.evaluate import evaluate
    from sft_cli.runs.generate import Sampling

    results = []
    sampling = Sampling(max_new_tokens=max_new_tokens)
    for is_base in ([True] if base else []) + [False]:
        progress.start("base model" if is_base else "tuned model")
        try:
            results.append(
                evaluate(run_dir, data, base=is_base, limit=limit, sampling=sampling, on_batch=progress.advance)
            )
        finally:
            progress.stop()
    return results


def _eval_tasks(run_dir: Path, tasks, base: bool, limit, num_fewshot, prompt: str, progress):
    """The harness tasks (`harness.load_tasks`), their results kept in the run folder and sent to its trackers."""
    from sft_cli.runs.harness import keep_results, run_harness
    from sft_cli.training.trackers import report_after_training

    def on_model(label: str) -> None:
        progress.start(f"{'base' if label == 'base' else 'tuned'} model: {', '.join(tasks.names)}", unit="requests")

    try:
        result = run_harness(
            run_dir, tasks, base, limit, num_fewshot, prompt, on_model=on_model, on_request=progress.advance
        )
    finally:
        progress.stop()
    result.saved_to = keep_results(run_dir, result)
    result.tracker_problems = report_after_training(run_dir, result.tracker_metrics())
    return result


def merge(
    run_dir: Path = RunArg,
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the merged model."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder."),
) -> None:
    """Merge a LoRA run's adapter into its base: a standard folder any transformers user can load."""
    from sft_cli.export.merge import merge_run
    from sft_cli.runs.record import read_record

    quiet_libraries()
    target = merge_run(run_dir, output, overwrite)
    note = read_record(target).quantization_note
    if note:
        err.print(f"note: {note}", highlight=False)
    out.print(f"[green]✓[/] merged model in {target}", highlight=False)


def export(
    run_dir: Path = RunArg,
    format: str = typer.Option(..., "--format", "-f", help="hf (transformers, vLLM, TGI) | gguf (llama.cpp) | ollama"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Folder to write; default RUN-FORMAT[-DTYPE]."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="f32 | f16 | bf16, and q8_0 for GGUF; default: as trained for hf, f16 for GGUF."
    ),
    check: int = typer.Option(
        16,
        "--check",
        min=0,
        help="Rows to check (of --check-data, else the run's eval data, else its train data): prompt ids, "
        "greedy answer and stop through the export's own runtime.",
    ),
    check_data: Path | None = typer.Option(
        None, "--check-data", help="Check on the rows of this file (e.g. held-out rows), read as `sft eval` reads it."
    ),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the check (the export is then unverified)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Longest answer the check generates."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    as_json: bool = typer.Option(False, "--json", help="The export report as one JSON document on stdout."),
) -> None:
    """Export a run where users run models, with the prompt format and stop tokens it was trained with, checked
    to answer as `sft generate` does. A LoRA run is merged first; the run folder is never changed."""
    from sft_cli.cli.results_view import render_export
    from sft_cli.cli.view import ProgressView
    from sft_cli.export.exporter import export_run

    quiet_libraries()
    result = export_run(
        run_dir,
        format,
        output,
        dtype,
        overwrite=overwrite,
        check=0 if no_check else check,
        check_data=check_data,
        max_new_tokens=max_new_tokens,
        progress=ProgressView(err),
    )
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict(), ensure_ascii=False) + "\n")
    else:
        render_export(out, result)
    if not result.verified:
        raise typer.Exit(1)
