"""Loading rows: every file type, column mapping, format detection, bad rows named by file/row/field."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import ALPACA_ROWS, write_jsonl

from sft_cli.data.rows import load_rows, normalise, read_records
from sft_cli.errors import DataError
from sft_cli.recipe.schema import Recipe


def recipe(path, **data) -> Recipe:
    return Recipe.model_validate({"model": {"name": "x"}, "data": {"path": str(path), **data}})


def test_jsonl_json_csv_parquet_read_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)
    (tmp_path / "a.json").write_text(json.dumps({"data": ALPACA_ROWS}))
    with (tmp_path / "a.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(ALPACA_ROWS)
    pq.write_table(pa.Table.from_pylist(ALPACA_ROWS), tmp_path / "a.parquet")
    loaded = [load_rows(recipe(tmp_path / f"a.{ext}")).rows for ext in ("jsonl", "json", "csv", "parquet")]
    assert all([r.fields for r in rows] == [r.fields for r in loaded[0]] for rows in loaded)
    assert loaded[0][0].fields == ALPACA_ROWS[0] and loaded[0][2].number == 3


def test_save_to_disk_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list(ALPACA_ROWS).save_to_disk(str(tmp_path / "ds"))
    assert len(load_rows(recipe(tmp_path / "ds")).rows) == len(ALPACA_ROWS)


def test_column_mapping_and_detection(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "2+2?", "answer": "4"}])
    rows = load_rows(recipe(path, columns={"instruction": "question", "output": "answer"}))
    assert rows.format == "alpaca" and rows.rows[0].fields == {"instruction": "2+2?", "input": "", "output": "4"}
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    assert load_rows(recipe(path)).rows[0].fields["output"] == "Hello"


def test_undetectable_format_names_columns(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "2+2?", "answer": "4"}])
    with pytest.raises(DataError, match=r"cannot tell the data format from the columns \['answer', 'question'\]"):
        load_rows(recipe(path))


@pytest.mark.parametrize(
    "row, message",
    [
        ({"instruction": "a"}, "row 2: missing field 'output'"),
        ({"instruction": "a", "output": 3}, "row 2: field 'output' must be text, got int"),
        ({"instruction": "a", "output": "  "}, "row 2: field 'output' \\(the answer\\) is empty"),
        ({"instruction": "a", "output": "b", "input": ["x"]}, "row 2: field 'input' must be text"),
    ],
)
def test_bad_row_names_file_row_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [ALPACA_ROWS[0], row])
    with pytest.raises(DataError, match=f"bad.jsonl {message}"):
        load_rows(recipe(path))


def test_bad_rows_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [ALPACA_ROWS[0], {"instruction": "a"}, ALPACA_ROWS[1]])
    rows = load_rows(recipe(path, on_bad_row="skip"))
    assert [r.number for r in rows.rows] == [1, 3] and rows.skipped == [(2, "missing field 'output'")]


@pytest.mark.parametrize(
    "messages, message",
    [
        ([{"role": "user", "content": "hi"}], "no assistant turn"),
        ([{"role": "robot", "content": "hi"}], "message 1: role 'robot' is not one sft reads"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
            "message 2: the assistant turn is empty",
        ),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"function": {}}]}],
            "message 2: each tool call needs a function name",
        ),
    ],
)
def test_bad_messages(tmp_path, messages, message):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}])
    with pytest.raises(DataError, match=f"row 1: {message}"):
        load_rows(Recipe.model_validate({"model": {"name": "x"}, "template": "chat", "data": {"path": str(path)}}))


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{oops\n')
    with pytest.raises(DataError, match="x.jsonl line 3: invalid JSON"):
        read_records(str(path))


def test_eval_fraction_split_is_seeded_and_disjoint(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(50)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    r = recipe(path, eval_fraction=0.2)
    train, evaluation = load_rows(r, "train"), load_rows(r, "eval")
    numbers = {x.number for x in train.rows}, {x.number for x in evaluation.rows}
    assert len(numbers[1]) == 10 and not numbers[0] & numbers[1] and len(numbers[0] | numbers[1]) == 50
    assert {x.number for x in load_rows(r, "eval").rows} == numbers[1]


def test_eval_split_without_eval_data(tmp_path):
    with pytest.raises(DataError, match="no eval data"):
        load_rows(recipe(write_jsonl(tmp_path / "d.jsonl", ALPACA_ROWS)), "eval")


def test_reasoning_and_tools_are_read_from_common_data_shapes():
    """reasoning_content / thinking / a leading <think> block, JSON-text arguments and tools all normalise."""
    row = normalise(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "<think>\nstep\n</think>\n\nanswer"},
                {
                    "role": "assistant",
                    "thinking": "t",
                    "content": "a",
                    "tool_calls": [{"function": {"name": "f", "arguments": json.dumps({"x": 1})}}],
                },
            ],
            "tools": json.dumps([{"type": "function", "function": {"name": "f"}}]),
        },
        "messages",
        {},
        False,
    )
    assert row["messages"][1] == {"role": "assistant", "content": "answer", "reasoning": "step"}
    assert row["messages"][2]["reasoning"] == "t"
    assert row["messages"][2]["tool_calls"] == [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]
    assert row["tools"][0]["function"]["name"] == "f"
