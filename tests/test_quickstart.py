"""The point of the tool: SmolLM2-135M fine-tuned on the bundled tasks answers held-out rows in the expected
format far more often than the untouched model (the quickstart, shortened)."""

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
            "--base",
            "--limit",
            "36",
            "--max-new-tokens",
            "16",
            "--json",
        ],
    )
    assert scored.exit_code == 0, scored.output
    base, tuned = json.loads(scored.stdout)["results"]
    assert tuned["loss"] < base["loss"] / 2
    assert tuned["exact_match"] >= base["exact_match"] + 0.15, (base, tuned)
