"""The run record: the train/inference contract a run folder carries, in every format version sft has written."""

from __future__ import annotations

import json

import pytest

from sft_cli.errors import SftError
from sft_cli.recipe.schema import EncodingSpec
from sft_cli.recipe.sections import CustomTemplate, ModelSection
from sft_cli.runs.record import TEMPLATE_FILE, RunRecord, read_record, write_record

# sft_template.json exactly as releases before the format version wrote it (flat contract fields)
VERSION_1 = {
    "template": {"prompt": "Q: {instruction}\nA: ", "response": "{output}", "special_tokens": []},
    "loss": "unmasked", "loss_turns": "last", "max_length": 256,
    "chat": {"system_message": "keep", "train_reasoning": False, "template_kwargs": {"enable_thinking": False}},
    "special_tokens_in_text": "control", "stop_tokens": ["<|im_end|>", "<|endoftext|>"],
    "base_model": {"name": "/models/base", "gguf_file": None, "revision": None, "trust_remote_code": False},
    "lora": True,
}  # fmt: skip


def test_a_version_1_record_still_loads(tmp_path):
    (tmp_path / TEMPLATE_FILE).write_text(json.dumps(VERSION_1))
    record = read_record(tmp_path)
    assert record.encoding.template == CustomTemplate(prompt="Q: {instruction}\nA: ")
    assert (record.encoding.loss, record.encoding.loss_turns, record.encoding.max_length) == ("unmasked", "last", 256)
    assert record.encoding.special_tokens_in_text == "control"
    assert record.encoding.chat.template_kwargs == {"enable_thinking": False}
    assert record.stop_tokens == ("<|im_end|>", "<|endoftext|>") and record.lora
    assert record.base_model.name == "/models/base"


def test_written_then_read_is_the_same_record(tmp_path):
    record = RunRecord(EncodingSpec(template="chat", max_length=64), ("<|eot_id|>",), ModelSection(name="m"))
    write_record(tmp_path, record)
    assert json.loads((tmp_path / TEMPLATE_FILE).read_text())["format"] == 2
    assert read_record(tmp_path) == record


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not an sft run folder"),
        ({"format": 99, "encoding": {}}, "written by a newer sft"),
        ({"format": 2, "encoding": {"loss": "sometimes"}, "base_model": {"name": "m"}}, "unreadable run record"),
        ("{not json", "unreadable run record"),
    ],
)
def test_a_missing_newer_or_broken_record_is_a_clear_error(tmp_path, content, message):
    if content is not None:
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / TEMPLATE_FILE).write_text(text)
    with pytest.raises(SftError, match=message):
        read_record(tmp_path)
