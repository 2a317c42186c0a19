"""The point of the tool: SmolLM2-135M fine-tuned on the bundled tasks answers held-out rows in the expected
format far more often than the untouched model, scores its answers at every evaluation, and keeps most of the general
knowledge the bundled harness task asks about (the quickstart, shortened)."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT
from typer.testing import CliRunner

from sft_cli.cli.app import app

pytestmark = pytest.mark.slow


def test_held_out_exact_match_rises_over_base(tmp_path):
    runner = CliRunner()
    run_dir = tmp_path / "run"
    trained = runner.invoke(
        app,
        [
            "train",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--set",
            "training.max_steps=40",
            "--set",
            "training.eval_steps=20",
            "--set",
            f"output.dir={run_dir}",
        ],
    )
    assert trained.exit_code == 0, trained.output
    scored = runner.invoke(
        app,
        [
            "eval",
            str(run_dir),
            "--data",
            str(ROOT / "data" / "tasks" / "eval.jsonl"),
            "--tasks",
            str(ROOT / "data" / "harness" / "general_knowledge.yaml"),
            "--base",
            "--limit",
            "36",
            "--max-new-tokens",
            "16",
            "--json",
        ],
    )
    assert scored.exit_code == 0, scored.output
    document = json.loads(scored.stdout)
    base, tuned = document["results"]
    assert tuned["loss"] < base["loss"] / 2
    assert tuned["exact_match"] >= base["exact_match"] + 0.15, (base, tuned)
    evaluations = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in evaluations if "eval_exact_match" in m] == [20, 40]
    (knowledge,) = [s for s in document["harness"]["scores"] if s["metric"] == "acc"]
    assert knowledge["samples"] == 36 and knowledge["base"] > 0.5  # four choices: chance is 0.25
    assert knowledge["tuned"] > knowledge["base"] - 0.2, knowledge  # 40 LoRA steps forget little of it
