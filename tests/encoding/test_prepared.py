"""The prepared dataset: encoded once into a cached Arrow file, reused while nothing that shapes it changes, the
same ids and labels as `sft preview --json`, the same with worker processes as without, bad input named."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from conftest import ALPACA_ROWS, write_jsonl
from typer.testing import CliRunner

from sft_cli.cli.app import app
from sft_cli.encoding.cache import prepare_split
from sft_cli.encoding.loading import load_tokenizer
from sft_cli.errors import DataError
from sft_cli.recipe.schema import load_recipe

runner = CliRunner()
MANY = [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)} for i in range(2500)]


def recipe_at(tmp_path, model, rows=None, name="recipe.yaml", **fields):
    if rows is not None:
        write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = {"model": {"name": str(model)}, "data": {"path": "train.jsonl", **fields.pop("data", {})}, **fields}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def prepared_for(path, overrides=(), **options):
    recipe = load_recipe(path, list(overrides)).recipe
    return prepare_split(recipe, load_tokenizer(recipe), "train", **options)


def test_cache_is_reused_until_something_that_shapes_it_changes(tmp_path, tiny_path):
    path = recipe_at(tmp_path, tiny_path, ALPACA_ROWS)
    first = prepared_for(path)
    again = prepared_for(path)
    assert (first.cached, again.cached) == (False, True) and again.fingerprint == first.fingerprint
    assert again.dataset()["input_ids"] == first.dataset()["input_ids"]
    changed = {
        "template": prepared_for(path, ["template=human_assistant"]),
        "max_length": prepared_for(path, ["max_length=512"]),
        "loss": prepared_for(path, ["loss=unmasked"]),
    }
    assert all(not p.cached for p in changed.values())
    assert len({p.fingerprint for p in [first, *changed.values()]}) == 4
    write_jsonl(tmp_path / "train.jsonl", ALPACA_ROWS[:3])  # the data file changes
    edited = prepared_for(path)
    assert not edited.cached and edited.stats.examples == 3
    unrelated = prepared_for(path, ["training.learning_rate=0.1", "training.epochs=9"])
    assert unrelated.cached  # training settings do not change the encoding


def test_cached_dataset_equals_preview_json(tmp_path, smollm2_path):
    path = recipe_at(tmp_path, smollm2_path, MANY[:300])
    result = runner.invoke(app, ["preview", str(path), "--json", "-n", "300"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["stats"]["examples"] == 300 and not shown["stats"]["cached"]
    dataset = prepared_for(path).dataset()
    assert [e["input_ids"] for e in shown["examples"]] == dataset["input_ids"]
    assert [e["labels"] for e in shown["examples"]] == dataset["labels"]
    assert [e["index"] for e in shown["examples"]] == dataset["row"]
    again = json.loads(runner.invoke(app, ["preview", str(path), "--json", "-n", "1"]).stdout)
    assert again["stats"]["cached"] and again["stats"]["histogram"] == shown["stats"]["histogram"]


def test_workers_encode_the_same_rows_and_count_skipped_rows(tmp_path, tiny_path):
    rows = [{"instruction": r["instruction"]} if i % 100 == 7 else r for i, r in enumerate(MANY)]
    path = recipe_at(tmp_path, tiny_path, rows, data={"on_bad_row": "skip"})
    one = prepared_for(path, cache=False, num_proc=1)
    two = prepared_for(path, cache=False, num_proc=2)
    assert two.dataset()["input_ids"] == one.dataset()["input_ids"]
    assert two.dataset()["row"] == one.dataset()["row"]
    assert two.stats.skipped == one.stats.skipped == 25
    assert two.stats.skipped_rows == one.stats.skipped_rows
    assert two.stats.skipped_rows[:2] == [(8, "missing field 'output'"), (108, "missing field 'output'")]
    assert two.stats.examples == 2475 and two.stats.rows == 2500
    one.discard()
    two.discard()


def test_a_bad_row_in_a_worker_is_one_clear_error(tmp_path, tiny_path):
    rows = list(MANY)
    rows[2099] = {"instruction": "no answer here"}
    path = recipe_at(tmp_path, tiny_path, rows, data={"num_proc": 2})
    result = runner.invoke(app, ["prepare", str(path)])
    assert result.exit_code == 2, result.output
    assert "train.jsonl row 2100: missing field 'output'" in result.output
    assert "Traceback" not in result.output and "hint:" in result.output


def test_a_row_the_chat_template_refuses_in_a_worker_names_its_row(tmp_path, tiny_path):
    from families import FAMILIES, build_family_tokenizer

    gemma = build_family_tokenizer(FAMILIES["gemma2"], tiny_path, tmp_path / "gemma2")  # refuses system turns
    chats = [
        {"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello"}]}
        for i in range(2200)
    ]
    chats[2150]["messages"].insert(0, {"role": "system", "content": "Be kind."})
    path = recipe_at(tmp_path, gemma, chats, template="chat", data={"num_proc": 2})
    result = runner.invoke(app, ["prepare", str(path)])
    assert result.exit_code == 2, result.output
    assert "row 2151: the chat template refused this chat: System role not supported" in result.output
    assert "chat.system_message: merge_into_first_user" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_utf8_file_with_a_byte_order_mark_is_read(tmp_path, tiny_path, suffix):
    data = tmp_path / f"train.{suffix}"
    if suffix == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ALPACA_ROWS)
    else:
        text = "instruction,input,output\n" + "".join(
            f"{r['instruction']},{r['input']},{r['output']}\n" for r in ALPACA_ROWS if "," not in "".join(r.values())
        )
    data.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    path = recipe_at(tmp_path, tiny_path, None, data={"path": data.name})
    result = runner.invoke(app, ["preview", str(path), "--json", "-n", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["examples"][0]["text"].startswith("<s>") is False  # BOM not part of the text
    assert "\ufeff" not in json.loads(result.stdout)["examples"][0]["text"]


@pytest.mark.parametrize(
    "suffix, content",
    [
        ("jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n'),
        ("csv", b"instruction,output\ncaf\xe9,b\n"),
        ("json", b'[{"instruction": "a", "output": "b"},\n {"instruction": "caf\xe9", "output": "b"}]'),
    ],
)
def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path, tiny_path, suffix, content):
    data = tmp_path / f"train.{suffix}"
    data.write_bytes(content)
    path = recipe_at(tmp_path, tiny_path, None, data={"path": data.name})
    result = runner.invoke(app, ["preview", str(path)])
    assert result.exit_code == 2, result.output
    assert f"train.{suffix} line 2: not UTF-8 text" in result.output and "Traceback" not in result.output
    with pytest.raises(DataError, match="line 2: not UTF-8"):
        prepared_for(path)


def test_no_cache_keeps_nothing(tmp_path, tiny_path, isolated_cache):
    path = recipe_at(tmp_path, tiny_path, ALPACA_ROWS, data={"cache_dir": "my-cache"})
    result = runner.invoke(app, ["prepare", str(path), "--no-cache"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "my-cache").exists()
    result = runner.invoke(app, ["prepare", str(path)])
    assert result.exit_code == 0 and len(list((tmp_path / "my-cache").iterdir())) == 1
    assert "reused" in runner.invoke(app, ["prepare", str(path)]).output


def test_preview_shows_examples_before_the_dataset_is_encoded(tmp_path, tiny_path):
    from sft_cli.encoding.preview import build_preview
    from sft_cli.progress import Progress

    events = []
    recipe = load_recipe(recipe_at(tmp_path, tiny_path, MANY)).recipe

    class Recorded(Progress):
        def start(self, description, total=None):
            events.append("encoding")

    progress = Recorded()
    preview = build_preview(
        recipe,
        limit=2,
        progress=progress,
        on_examples=lambda shown: events.append(("shown", [v.example.row for v in shown])),
    )
    assert events == [("shown", [1, 2]), "encoding"]
    assert preview.stats.examples == 2500
    histogram = preview.stats.histogram()
    assert sum(histogram["counts"]) + histogram["over_max_length"] == 2500


def test_a_second_command_reuses_the_cache(tmp_path, smollm2_path):
    """Each command is its own process (with its own string hashing): the fingerprint must not depend on it
    (SmolLM2 has many special tokens of equal length, whose order once followed the hashing)."""
    import subprocess
    import sys

    path = recipe_at(tmp_path, smollm2_path, ALPACA_ROWS)
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-m", "sft_cli", "prepare", str(path)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(result.stdout)
    assert "train: prepared" in outputs[0] and "train: reused" in outputs[1]


def test_the_cache_key_covers_every_source_file_of_the_encoding_packages(monkeypatch):
    """A change to any file under data/ or encoding/ (stats.py included, which the old hand list missed) encodes
    again; the list is read from the folders, so a new module is covered without anyone adding it."""
    from pathlib import Path

    from sft_cli.encoding import cache

    package = Path(cache.__file__).resolve().parent.parent
    expected = sorted(p for name in ("data", "encoding") for p in (package / name).rglob("*.py"))
    assert cache.encoding_sources() == expected and package / "encoding" / "stats.py" in expected
    before, original = cache._code_version(), Path.read_bytes
    for changed in expected:
        monkeypatch.setattr(Path, "read_bytes", lambda p, c=changed: original(p) + (b"#" if p == c else b""))
        assert cache._code_version() != before, changed
    monkeypatch.setattr(Path, "read_bytes", original)
