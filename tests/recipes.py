"""Recipe and data files the tests write: a training recipe over a tiny model, the metrics a run logs, three
data sources of different formats to mix, and lm-evaluation-harness task YAMLs with their data beside them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from conftest import ALPACA_ROWS, write_jsonl

REPEATED = ALPACA_ROWS * 4
SIZES = {"alpaca": 600, "qa": 400, "dialogues": 300}


def recipe_file(tmp_path: Path, model: Path, rows=REPEATED, **fields) -> Path:
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    training = {
        "batch_size": 4,
        "learning_rate": 3e-3,
        "max_steps": 12,
        "logging_steps": 1,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
        "save_steps": 4,
        **fields.pop("training", {}),
    }
    recipe = {
        "model": {"name": str(model)},
        "data": {"path": data.name, **fields.pop("data", {})},
        "max_length": 64,
        "training": training,
        "output": {"dir": "run"},
        **fields,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_sources(folder: Path, sizes: dict[str, int] = SIZES) -> dict[str, Path]:
    """An alpaca .jsonl, a .csv whose columns need mapping, and a `messages` .parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    alpaca = write_jsonl(
        folder / "alpaca.jsonl",
        [
            {"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)}
            for i in range(sizes["alpaca"])
        ],
    )
    qa = folder / "qa.csv"
    with qa.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["question", "answer"])
        writer.writeheader()
        writer.writerows({"question": f"Spell {i} in words?", "answer": f"number {i}"} for i in range(sizes["qa"]))
    chats = [
        [{"role": "user", "content": f"Say hello {i} times."}, {"role": "assistant", "content": f"hello x{i}"}]
        for i in range(sizes["dialogues"])
    ]
    dialogues = folder / "dialogues.parquet"
    pq.write_table(pa.table({"messages": chats}), dialogues)
    return {"alpaca": alpaca, "qa": qa, "dialogues": dialogues}


def sources(files: dict[str, Path], weights=(0.5, 0.3, 0.2), **extra) -> list[dict]:
    entries = [
        {"path": files["alpaca"].name},
        {"path": files["qa"].name, "columns": {"instruction": "question", "output": "answer"}},
        {"path": files["dialogues"].name, "format": "messages"},
    ]
    for entry, weight in zip(entries, weights):
        if weight is not None:
            entry["weight"] = weight
        entry.update(extra)
    return entries


def mixed_recipe(folder: Path, model: Path, entries: list[dict], training=None, **data) -> Path:
    recipe = {
        "model": {"name": str(model)},
        "data": {"sources": entries, **data},
        "template": "chat",
        "max_length": 64,
        "training": {"batch_size": 8, "max_steps": 6, "logging_steps": 1, **(training or {})},
        "output": {"dir": "run"},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


QUESTIONS = [("What is 1 plus 2?", ["3", "4", "12"], 0), ("Which is a colour?", ["seven", "green", "run"], 1)]


def write_task(folder: Path, name: str, rows: list[dict], **config) -> Path:
    """An lm-evaluation-harness task YAML and its rows, the YAML naming its data file relative to itself."""
    write_jsonl(folder / f"{name}.jsonl", rows)
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": f"{name}.jsonl"}},
        "test_split": "test",
        "metadata": {"version": 1.0},
        **config,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def choice_task(folder: Path, **config) -> Path:
    """A multiple-choice task (`choice`, metric acc) over QUESTIONS."""
    return write_task(
        folder,
        "choice",
        [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS],
        output_type="multiple_choice",
        doc_to_text="Question: {{question}}\nAnswer:",
        doc_to_choice="{{choices}}",
        doc_to_target="{{answer}}",
        metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        **config,
    )
