"""The tables of the commands on a run folder: `sft eval` (your rows, and lm-evaluation-harness tasks with the
forgetting report) and `sft export`'s files and round-trip check."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def render_eval(console: Console, results) -> None:
    """Metrics side by side (base, then tuned), per task family, and a few answers."""
    table = Table(title="evaluation", title_justify="left")
    table.add_column("metric", style="bold")
    for result in results:
        table.add_column(result.model, justify="right")
    rows = [
        ("answer loss", lambda r: f"{r.loss:.4f}"),
        ("perplexity", lambda r: f"{r.perplexity:.2f}"),
        ("exact match", lambda r: f"{r.overall.as_dict()['exact_match']:.1%}"),
        ("answer contained", lambda r: f"{r.overall.as_dict()['contains']:.1%}"),
        ("examples", lambda r: str(r.overall.examples)),
    ]
    for name, value in rows:
        table.add_row(name, *[value(r) for r in results])
    tasks = sorted({t for r in results for t in r.by_task})
    for task in tasks:
        table.add_row(
            f"  exact · {task}",
            *[f"{r.by_task[task].as_dict()['exact_match']:.0%}" if task in r.by_task else "-" for r in results],
        )
    sources = list(results[-1].by_source)
    for source in sources:
        table.add_row(
            f"  loss / exact · {escape(source)}",
            *[
                f"{r.by_source[source].loss:.4f} / {r.by_source[source].overall.as_dict()['exact_match']:.0%}"
                for r in results
            ],
        )
    console.print(table)
    samples = Table(title="answers", title_justify="left")
    samples.add_column("row")
    samples.add_column("expected")
    for result in results:
        samples.add_column(result.model)
    for i, sample in enumerate(results[-1].samples):
        samples.add_row(str(sample["row"]), sample["expected"], *[r.samples[i]["answer"] for r in results])
    console.print(samples)


def render_harness(console: Console, result) -> None:
    """lm-eval's scores: tuned, and with --base the base's and the difference (red where the tuned model forgot
    more than the standard error)."""
    with_base = any(score.base is not None for score in result.scores)
    prompted = "the run's template" if result.prompt == "run" else "raw task text"
    table = Table(title=f"lm-evaluation-harness, {prompted} ({result.seconds:.0f} s)", title_justify="left")
    for name in ("task", "metric", "tuned") + (("base", "change") if with_base else ()) + ("± stderr", "n"):
        table.add_column(name, justify="left" if name in ("task", "metric") else "right")
    for score in result.scores:
        cells = [escape(score.task), escape(score.metric), f"{score.tuned:.4f}"]
        if with_base:
            change = "-" if score.change is None else f"{score.change:+.4f}"
            cells += [
                "-" if score.base is None else f"{score.base:.4f}",
                f"[red]{change}[/]" if score.forgotten else change,
            ]
        cells += ["-" if score.stderr is None else f"{score.stderr:.4f}", str(score.samples or "-")]
        table.add_row(*cells)
    console.print(table)
    console.print(f"results kept in {result.saved_to}", highlight=False, soft_wrap=True)
    for problem in result.tracker_problems:
        console.print(f"not sent to {problem}", style="yellow", highlight=False, soft_wrap=True)


def render_export(console: Console, result) -> None:
    """The export's files and its round-trip check, row by row where a row failed or diverged."""
    check = result.check
    verdict = "unverified (--no-check)" if check is None else ("verified" if check.passed else "CHECK FAILED")
    console.print(
        f"[bold]{result.format}[/] export in {result.folder} ({result.seconds:.0f} s): {verdict}",
        highlight=False,
        soft_wrap=True,
    )
    console.print("files: " + ", ".join(result.files), highlight=False, soft_wrap=True)
    if check is None:
        return
    summary = check.as_dict()
    n = summary["rows"]
    console.print(
        f"{n} rows of {result.facts.get('check_data')} through {check.runtime}: prompt ids equal "
        f"{summary['prompt_ids_equal']}/{n}, identical greedy answers {summary['identical_generations']}/{n}, "
        f"stops right {summary['stops_ok']}/{n}",
        highlight=False,
    )
    if check.stops_missing:
        console.print(f"[red]the export does not stop at: {', '.join(check.stops_missing)}[/]", highlight=False)
    table = Table(title="rows that differ", title_justify="left")
    for name in ("row", "prompt ids", "answer", "stop"):
        table.add_column(name)
    for row in check.rows:
        if row.prompt_ids_equal and row.identical and row.stop_ok:
            continue
        prompt = "equal" if row.prompt_ids_equal else f"differ at token {row.prompt_first_difference}"
        if row.error:
            prompt = f"refused: {escape(row.error)}"
        answer = "identical" if row.identical else f"diverges at token {row.first_divergence}"
        table.add_row(str(row.row), prompt, answer, "ok" if row.stop_ok else "[red]runs past a stop token[/]")
    if table.row_count:
        console.print(table)
