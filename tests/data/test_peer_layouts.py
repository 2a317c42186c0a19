"""Every peer layout of tests/data/peer_layouts.py previews and trains a few steps with no converter, the format
detected from its columns (Dolly's columns mapped in the recipe, as a user would)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import write_jsonl
from peer_layouts import LAYOUTS
from typer.testing import CliRunner

from sft_cli.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_peer_layout_previews_and_trains(tmp_path, tiny_smollm, layout):
    rows, fields = LAYOUTS[layout]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    columns = fields.get("columns")
    recipe = {
        "model": {"name": str(tiny_smollm)},
        "data": {"path": "rows.jsonl", **({"columns": columns} if columns else {})},
        "template": fields["template"],
        "max_length": 512,
        "training": {"max_steps": 2, "batch_size": 4, "logging_steps": 1},
        "output": {"dir": "run"},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    preview = runner.invoke(app, ["preview", str(tmp_path / "recipe.yaml"), "--json"])
    assert preview.exit_code == 0, preview.output
    stats = json.loads(preview.stdout)["stats"]
    assert stats["examples"] >= len(rows) and stats["dropped"] == stats["skipped"] == 0 and stats["trained_tokens"]
    result = runner.invoke(app, ["train", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 0, result.output
