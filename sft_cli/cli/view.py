"""The terminal view: library results drawn with rich (tables, token runs, histograms) and the progress of long
jobs; the tables of the run-folder commands are in results_view.py. The CLI calls it; the library never prints."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sft_cli.encoding.preview import Token
from sft_cli.progress import Progress

VISIBLE = {" ": "·", "\t": "→", "\n": "↵\n", "\r": "␍"}
TRAINED_STYLE, MASKED_STYLE, SPECIAL_STYLE = "bold green underline", "grey50", "magenta"


def visible(text: str) -> str:
    """Whitespace made visible: a trap hidden in a space or newline shows."""
    return "".join(VISIBLE.get(ch, ch) for ch in text)


def token_text(tokens: list[Token], show_ids: bool) -> Text:
    """Tokens separated by a thin bar; trained runs in green and inside ⟦ ⟧ (a cue that survives no colour)."""
    text = Text()
    in_trained = False
    previous = ""
    for token in tokens:
        if token.trained != in_trained:
            text.append("⟦" if token.trained else "⟧", style="bold green")
        elif previous and not previous.endswith("\n"):
            text.append("|", style="grey30")
        in_trained, previous = token.trained, token.text
        style = TRAINED_STYLE if token.trained else MASKED_STYLE
        if token.special:
            style = f"{style} {SPECIAL_STYLE}" if token.trained else SPECIAL_STYLE
        shown = visible(token.text)
        newline = "\n" if shown.endswith("\n") else ""
        text.append(shown.removesuffix("\n"), style=style)
        if show_ids:
            text.append(f"({token.id})", style="cyan")
        text.append(newline)
    if in_trained:
        text.append("⟧", style="bold green")
    return text


def render_examples(console: Console, shown, show_ids: bool = False) -> None:
    console.print(
        Text.assemble(
            "legend: ",
            ("⟦trained⟧", TRAINED_STYLE),
            " ",
            ("masked", MASKED_STYLE),
            " ",
            ("<special>", SPECIAL_STYLE),
            "  · space  ↵ newline  → tab  | token boundary",
        )
    )
    for view in shown:
        e = view.example
        trained = sum(t.trained for t in view.tokens)
        flags = " · truncated" if e.truncated else ""
        source = f"{view.source} " if view.source else ""
        console.rule(f"{source}row {e.row} · {len(e.input_ids)} tokens · {trained} trained{flags}", align="left")
        console.print(token_text(view.tokens, show_ids), soft_wrap=True)


def render_stats(console: Console, title: str, stats, warnings: list) -> None:
    """A split's counts, length histogram, skipped rows and warnings ((source label or "", DataWarning) pairs)."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("rows", f"{stats.rows:,}")
    table.add_row("examples kept", f"{stats.examples:,}")
    if stats.split_turns:
        table.add_row("chat turns trained in their own example", f"{stats.split_turns:,}")
    if stats.split_documents:
        table.add_row(
            "documents over max_length, split into windows", f"{stats.split_documents:,} -> {stats.windows:,}"
        )
    table.add_row("dropped (overflow / nothing trained)", f"{stats.dropped:,}")
    table.add_row("truncated", f"{stats.truncated:,}")
    table.add_row("skipped bad rows", f"{stats.skipped:,}")
    table.add_row(
        "tokens per example (mean / max / max_length)",
        f"{stats.mean_tokens:.1f} / {stats.max_tokens} / {stats.max_length}",
    )
    table.add_row("trained tokens", f"{stats.trained_tokens:,} of {stats.total_tokens:,} ({stats.trained_share:.1%})")
    console.print(table)
    render_histogram(console, stats.histogram())
    for number, reason in stats.skipped_rows[:5]:
        console.print(f"[yellow]skipped[/] row {number}: {escape(reason)}", highlight=False)
    for label, warning in warnings:
        more = warning.count - min(5, len(warning.rows))
        rows = ", ".join(map(str, warning.rows[:5])) + (f" (+{more:,} more)" if more > 0 else "")
        detail = f" [{escape(warning.detail)}]" if warning.detail else ""
        where = f"{label} " if label else ""
        console.print(
            f"[yellow]warning:[/] {warning.kind}: {warning.message}. {where}rows {rows}{detail}",
            highlight=False,
            soft_wrap=True,
        )


def render_sources(console: Console, sources: list[dict], notes: list[str]) -> None:
    """Several sources: each one's rows and examples, and, for the train split, its part of the mix."""
    mixed = "taken" in (sources[0] if sources else {})
    table = Table(title="sources", title_justify="left")
    headers = ["source", "rows", "examples"] + (["weight", "taken", "repeats", "tokens", "share"] if mixed else [])
    for header in headers:
        table.add_column(header, justify="left" if header == "source" else "right")
    for s in sources:
        cells = [escape(s["label"]), f"{s['rows']:,}", f"{s['examples']:,}"]
        if mixed:
            weight = f"{s['weight']:g}" if s["weight"] is not None else "-"
            cells += [weight, f"{s['taken']:,}", f"{s['repeats']:,}", f"{s['tokens']:,}", f"{s['share']:.1%}"]
        table.add_row(*cells)
    console.print(table)
    for note in notes:
        console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)


def render_histogram(console: Console, histogram: dict, width: int = 32) -> None:
    """Examples per token length, against max_length, so max_length can be picked from the data."""
    edges, counts = histogram["edges"], [*histogram["counts"], histogram["over_max_length"]]
    labels = [f"{edges[k] + 1}-{edges[k + 1]}" for k in range(len(edges) - 1)] + [f"> {edges[-1]}"]
    peak = max(counts) or 1
    console.print("tokens per example (before on_overflow)", style="bold")
    for label, count in zip(labels, counts):
        bar = "█" * round(width * count / peak) if count else ""
        style = "red" if label.startswith(">") and count else "cyan"
        console.print(f"  {label:>11} [{style}]{bar:<{width}}[/] {count:,}", highlight=False)


def render_plan(console: Console, plan) -> None:
    """The --dry-run plan: what a run would do, without doing it."""
    table = Table(title="plan (dry run: nothing trained)", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in plan.as_dict().items():
        if key == "prepared":
            value = ", ".join(
                f"{split} {'from the cache' if v['cached'] else 'encoded now'} ({v['folder']})"
                for split, v in value.items()
            )
        if key == "sources":
            value = ", ".join(
                f"{v['label']} {v['taken']:,} examples ({v['share']:.1%}"
                + (f", {v['repeats']:,} repeats" if v["repeats"] else "")
                + (f", commit {v['commit']}" if v.get("commit") else "")
                + ")"
                for v in value
            )
        if key == "eval_generate" and value:
            cost = value["seconds_per_evaluation"]
            value = (
                f"{value['rows']} eval rows answered (up to {value['max_new_tokens']} tokens) at each of "
                f"{value['evaluations']} evaluations" + ("" if cost is None else f", about {cost:.1f} s each")
            )
        if key == "batching":
            value = (
                f"{value['layout']}, {value['tokens_per_step']:,.0f} tokens and {value['examples_per_step']:g} "
                f"examples per step and process, padding {value['padding_share']:.1%}"
                + (
                    f", packing efficiency {value['packing_efficiency']:.1%}"
                    if value["packing_efficiency"] is not None
                    else ""
                )
            )
        if key == "memory":
            value = memory_line(value)
        if key == "memory_warning" and not value:
            continue
        if key == "environment":
            for row in environment_rows(value):
                table.add_row(*row)
            continue
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        table.add_row(key.replace("_", " "), shown)
    console.print(table)


def environment_rows(env: dict) -> list[tuple[str, str]]:
    """The environment decision (training/environment.py), a row per choice and one per note."""
    processes = f"{env['processes']} ({env['sharding']})" if env["processes"] > 1 else "1"
    weights = f"{env['trained_weights']} trained"
    if env["frozen_weights"] != env["trained_weights"]:
        weights += f", {env['frozen_weights']} frozen"
    rows = [
        ("device", env["device"]),
        ("processes", processes),
        ("precision", env["precision"]),
        ("weights", weights),
        ("attention", env["attention"]),
        ("loss", env["loss"]),
    ]
    return rows + [("note", note) for note in env["notes"]]


def memory_line(memory: dict) -> str:
    """The forecast in one line: total against the device, then its parts."""
    parts = ", ".join(f"{name.replace('_', ' ')} {size:,}" for name, size in memory["parts_mb"].items() if size)
    device = memory["device_memory_mb"]
    against = f" of {device:,} MB ({memory['forecast_mb'] / device:.0%})" if device else ""
    return (
        f"{memory['forecast_mb']:,} MB per process{against} at the longest batch ({memory['batch_tokens']:,} "
        f"tokens): {parts} MB"
    )


def render_memory(console: Console, memory: dict, warning: str | None) -> None:
    """`sft validate --memory`."""
    console.print(f"memory forecast: {memory_line(memory)}", highlight=False, soft_wrap=True)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


def render_smoke(console: Console, results) -> None:
    """Each recipe's stages with status, seconds and what they found."""
    colours = {"passed": "green", "failed": "bold red", "skipped": "yellow"}
    for result in results:
        total = sum(stage.seconds for stage in result.stages)
        verdict = "[green]passed[/]" if result.passed else "[bold red]FAILED[/]"
        table = Table(title=f"{escape(result.recipe)}: {verdict} ({total:.0f} s)", title_justify="left")
        for name in ("stage", "status", "seconds", "detail"):
            table.add_column(name)
        for stage in result.stages:
            colour = colours[stage.status]
            table.add_row(stage.name, f"[{colour}]{stage.status}[/]", f"{stage.seconds:.1f}", escape(stage.message))
        console.print(table)
        if result.folder:
            console.print(f"kept for inspection: {result.folder}", highlight=False)


class ProgressView(Progress):
    """A job drawn live: a spinner with a growing count while rows are encoded (their total is not known while
    they stream); a bar with loss, learning rate, tokens/s and ETA while training steps; notes and eval results as
    lines above it."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = None
        self.task = None

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True)

    def start(self, description: str, total: int | None = None, unit: str = "rows") -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self.stop()
        if total is None:
            columns = (
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.completed:,.0f} " + unit),
                TimeElapsedColumn(),
            )
        else:
            columns = (
                TextColumn("step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[metrics]}"),
                TextColumn("eta"),
                TimeRemainingColumn(),
            )
        self.bar = Bar(*columns, console=self.console, transient=total is None)
        self.task = self.bar.add_task(description, total=total, metrics="")
        self.bar.start()

    def advance(self, amount: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, amount)

    def update(self, completed: int, metrics: dict[str, float] | None = None) -> None:
        if self.bar is None:
            return
        metrics = metrics or {}
        if "eval_loss" in metrics:
            per_source = [
                f"{key[len('eval_') : -len('_loss')]} {value:.4f}"
                for key, value in metrics.items()
                if key.startswith("eval_") and key.endswith("_loss") and key != "eval_loss"
            ]
            sources = f" ({', '.join(per_source)})" if per_source else ""
            answers = (
                f", exact match {metrics['eval_exact_match']:.1%} (answers generated in "
                f"{sum(v for k, v in metrics.items() if k.endswith('_generate_seconds')):.1f} s)"
                if "eval_exact_match" in metrics
                else ""
            )
            self.bar.console.print(
                f"step {completed}: eval loss {metrics['eval_loss']:.4f}{sources}{answers}",
                highlight=False,
                soft_wrap=True,
            )
        shown = ""
        if "loss" in metrics:
            shown = f"loss {metrics['loss']:.4f} | lr {metrics.get('learning_rate', 0):.2e}"
            if metrics.get("tokens_per_s"):
                shown += f" | {metrics['tokens_per_s']:,.0f} tok/s"
        self.bar.update(self.task, completed=completed, **({"metrics": shown} if shown else {}))

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
