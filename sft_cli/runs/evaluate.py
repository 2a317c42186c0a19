"""`sft eval`: loss and perplexity on the answer tokens, and generation metrics (exact match after whitespace
normalisation, answer contained), overall, per task family and per data file, for a run and optionally its base
model."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from sft_cli.data.rows import Rows, load_rows, read_records
from sft_cli.encoding.encode import IGNORE, encode_rows
from sft_cli.errors import SftError
from sft_cli.recipe.schema import Recipe
from sft_cli.runs.generate import LoadedRun, Sampling, generate, load_run, pad_id
from sft_cli.runs.record import read_record


@dataclass
class Score:
    examples: int = 0
    exact: int = 0
    contains: int = 0

    def add(self, answer: str, expected: str) -> None:
        got, want = final_answer(answer), final_answer(expected)
        self.examples += 1
        self.exact += got == want
        self.contains += want in got

    def as_dict(self) -> dict:
        n = self.examples or 1
        return {
            "examples": self.examples,
            "exact_match": round(self.exact / n, 4),
            "contains": round(self.contains / n, 4),
        }


@dataclass
class FileScore:
    """One data file's answer-token loss and generation scores."""

    loss: float
    answer_tokens: int
    overall: Score

    def as_dict(self) -> dict:
        return {
            "loss": round(self.loss, 4),
            "perplexity": round(math.exp(min(self.loss, 50)), 3),
            "answer_tokens": self.answer_tokens,
            **self.overall.as_dict(),
        }


@dataclass
class EvalResult:
    model: str
    loss: float
    perplexity: float
    answer_tokens: int
    overall: Score
    by_task: dict[str, Score]
    samples: list[dict] = field(default_factory=list)
    by_source: dict[str, FileScore] = field(default_factory=dict)  # per data file, when given several

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "loss": round(self.loss, 4),
            "perplexity": round(self.perplexity, 3),
            "answer_tokens": self.answer_tokens,
            **self.overall.as_dict(),
            "by_task": {k: v.as_dict() for k, v in sorted(self.by_task.items())},
            "by_source": {k: v.as_dict() for k, v in self.by_source.items()},
            "samples": self.samples,
        }


def final_answer(text: str) -> str:
    """Whitespace-normalised final answer: a reasoning block the model wrote first (`<think>...</think>`) is not
    part of it."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[-1]
    return " ".join(text.split())


def eval_recipe(run_dir: Path, data: Path) -> Recipe:
    """The run's contract over the given rows, with masked loss (answer tokens are what is scored) and long
    prompts cut from the left rather than dropped."""
    record = read_record(run_dir)
    encoding = record.encoding.model_copy(update={"loss": "masked", "on_overflow": "truncate_prompt"})
    return Recipe.from_encoding(encoding, record.base_model, {"path": str(data)})


def file_rows(run_dir: Path, path: Path, limit: int | None, purpose: str) -> tuple[Recipe, Rows]:
    """A data file's first `limit` rows (all without a limit), read under the run's contract (`eval_recipe`)."""
    recipe = eval_recipe(run_dir, path)
    rows = load_rows(recipe, "train")
    if limit:
        rows.rows = rows.rows[:limit]
    if not rows.rows:
        raise SftError(f"{path}: no rows to {purpose}")
    return recipe, rows


def has_answer(record: dict) -> bool:
    """A row sft eval can score: an output or completion, or a chat whose last turn is the assistant's."""
    if isinstance(record.get("messages"), list) and record["messages"]:
        last = record["messages"][-1]
        return isinstance(last, dict) and last.get("role") == "assistant"
    return any(isinstance(record.get(key), str) and record[key].strip() for key in ("output", "completion"))


def expected_answer(fields: dict) -> str:
    if "messages" in fields:
        return fields["messages"][-1]["content"]
    return fields["output"]


def answer_loss(run: LoadedRun, examples, batch_size: int = 16) -> tuple[float, int]:
    """Mean cross-entropy over the trained (answer + end) tokens, and how many there were."""
    import torch

    total, count = 0.0, 0
    pad = pad_id(run.tokenizer)  # as generation pads (the id never counts: masked and unlabelled)
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in batch], device=run.model.device)
        labels = torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in batch], device=run.model.device)
        mask = (torch.arange(width)[None, :] < torch.tensor([len(e.input_ids) for e in batch])[:, None]).long()
        with torch.no_grad():
            logits = run.model(input_ids=ids, attention_mask=mask.to(run.model.device)).logits.float()
        shifted = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1), reduction="sum", ignore_index=IGNORE
        )
        total += losses.item()
        count += int((shifted != IGNORE).sum())
    return total / max(count, 1), count


def evaluate(
    run_dir: Path,
    data: Path | list[Path],
    base: bool = False,
    limit: int | None = None,
    sampling: Sampling = Sampling(max_new_tokens=64),
    samples: int = 5,
    on_batch=None,
) -> EvalResult:
    """Score one model (the run's, or its base with `base`) on the rows of `data`: one file, or several, each
    scored on its own (`by_source`, by file stem) and together (losses weighted by answer tokens)."""
    files = [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
    all_records = {path: read_records(str(path)) for path in files}
    for path, records in all_records.items():
        missing = next((n for n, record in enumerate(records, 1) if not has_answer(record)), None)
        if missing is not None:
            raise SftError(
                f"{path}: eval needs an answer (output, completion or a final assistant turn); row {missing} has none",
                hint="`sft generate RUN --file ROWS` answers rows without one",
            )
    run = load_run(run_dir, base=base)
    overall, by_task, shown, by_source = Score(), defaultdict(Score), [], {}
    for path, records in all_records.items():
        recipe, rows = file_rows(run_dir, path, limit, "evaluate")
        tasks = {i: r.get("task") for i, r in enumerate(records, 1)}
        options = replace(run.options, unmasked=False)
        encoded = encode_rows(rows, run.tokenizer, recipe, diagnose=False, options=options)
        loss, tokens = answer_loss(run, encoded.examples)
        answers = generate(run, [r.fields for r in rows.rows], sampling, on_batch=on_batch)
        score = Score()
        for row, answer in zip(rows.rows, answers):
            expected = expected_answer(row.fields)
            for scored in (overall, score):
                scored.add(answer, expected)
            task = tasks.get(row.number)
            if task:
                by_task[str(task)].add(answer, expected)
            if len(shown) < samples:
                shown.append({"row": row.number, "expected": expected, "answer": answer})
        by_source[_file_label(path, by_source)] = FileScore(loss, tokens, score)
    tokens = sum(s.answer_tokens for s in by_source.values())
    loss = sum(s.loss * s.answer_tokens for s in by_source.values()) / max(tokens, 1)
    name = f"{run.record.base_model.name} (base)" if base else str(run_dir)
    per_file = by_source if len(files) > 1 else {}
    return EvalResult(name, loss, math.exp(min(loss, 50)), tokens, overall, dict(by_task), shown, per_file)


def _file_label(path: Path, taken: dict) -> str:
    """A data file's name in the results: its stem, made unique."""
    label, n = path.name.split(".")[0], 2
    while label in taken:
        label, n = f"{path.name.split('.')[0]}-{n}", n + 1
    return label
