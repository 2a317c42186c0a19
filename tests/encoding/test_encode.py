"""The one encoding: trained tokens are exactly answer + end token (masked) or everything (unmasked), on both
tokenizers and every template; chats train exactly the assistant turns; overflow policies; special tokens."""

from __future__ import annotations

import pytest
from conftest import ALPACA_ROWS, CHAT_ROWS
from transformers import AutoTokenizer

from sft_cli.data.rows import Row, Rows
from sft_cli.encoding.encode import IGNORE, encode_rows, prepare_tokenizer
from sft_cli.encoding.templates import alpaca_to_messages, render_prompt
from sft_cli.errors import DataError
from sft_cli.recipe.schema import Recipe

CUSTOM = {"prompt": "Q: {instruction} {input}\nA:", "response": " {output}", "special_tokens": ["<|sep|>"]}
TEMPLATES = ["alpaca", "human_assistant", "special_tokens", "chat", "custom"]


def recipe_for(template, **fields) -> Recipe:
    spec = CUSTOM if template == "custom" else template
    return Recipe.model_validate({"model": {"name": "x"}, "data": {"path": "x.jsonl"}, "template": spec, **fields})


def rows_of(records) -> Rows:
    from sft_cli.data.rows import normalise

    fmt = "messages" if "messages" in records[0] else "alpaca"
    return Rows([Row(i, normalise(r, fmt, {}, keep_extra=True)) for i, r in enumerate(records, 1)], "t.jsonl", fmt)


def tokenizer_for(path, recipe):
    tokenizer = AutoTokenizer.from_pretrained(path)
    prepare_tokenizer(tokenizer, recipe)
    return tokenizer


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != IGNORE])


def expected_answer(template, row, tokenizer) -> str:
    end = tokenizer.eos_token
    return (" " + row["output"] if template == "custom" else row["output"]) + end


@pytest.mark.parametrize("template", TEMPLATES)
def test_masked_trains_exactly_answer_and_end_token(model_path, template):
    recipe = recipe_for(template)
    tokenizer = tokenizer_for(model_path, recipe)
    encoded = encode_rows(rows_of(ALPACA_ROWS), tokenizer, recipe)
    assert encoded.stats.examples == len(ALPACA_ROWS)
    for row, example in zip(ALPACA_ROWS, encoded.examples):
        assert trained_text(tokenizer, example) == expected_answer(template, row, tokenizer)
        trained = [i for i, label in enumerate(example.labels) if label != IGNORE]
        assert trained == list(range(trained[0], trained[-1] + 1))  # one contiguous run
        assert example.input_ids[trained[-1]] == tokenizer.eos_token_id  # EOS trained even where pad == EOS


@pytest.mark.parametrize("template", TEMPLATES)
def test_unmasked_trains_every_token(model_path, template):
    recipe = recipe_for(template, loss="unmasked")
    tokenizer = tokenizer_for(model_path, recipe)
    for example in encode_rows(rows_of(ALPACA_ROWS), tokenizer, recipe).examples:
        assert example.labels == example.input_ids


@pytest.mark.parametrize("template", TEMPLATES)
def test_prompt_tokens_equal_inference_tokens_and_one_bos(model_path, template):
    recipe = recipe_for(template)
    tokenizer = tokenizer_for(model_path, recipe)
    encoded = encode_rows(rows_of(ALPACA_ROWS), tokenizer, recipe)
    for row, example in zip(ALPACA_ROWS, encoded.examples):
        prompt = render_prompt(recipe.template, {**row, "input": row.get("input", "")}, tokenizer).text
        at_inference = tokenizer(prompt, add_special_tokens=template != "chat")["input_ids"]
        first_trained = next(i for i, label in enumerate(example.labels) if label != IGNORE)
        assert example.input_ids[:first_trained] == at_inference
        assert example.input_ids[:2] != [tokenizer.bos_token_id] * 2  # no doubled BOS


def test_chat_trains_every_assistant_turn_and_nothing_else(model_path):
    recipe = recipe_for("chat", data={"path": "x.jsonl", "format": "messages"})
    tokenizer = tokenizer_for(model_path, recipe)
    encoded = encode_rows(rows_of(CHAT_ROWS), tokenizer, recipe)
    end = tokenizer.eos_token
    assert trained_text(tokenizer, encoded.examples[0]) == f"Tokyo.{end}Paris.{end}"
    assert trained_text(tokenizer, encoded.examples[1]) == f"Cold.{end}"
    masked = tokenizer.decode(
        [t for t, lb in zip(encoded.examples[0].input_ids, encoded.examples[0].labels) if lb == IGNORE]
    )
    for content in ("Be brief.", "Capital of Japan?", "And France?"):
        assert content in masked


def test_chat_last_turn_only(model_path):
    recipe = recipe_for("chat", loss_turns="last", data={"path": "x.jsonl", "format": "messages"})
    tokenizer = tokenizer_for(model_path, recipe)
    encoded = encode_rows(rows_of(CHAT_ROWS), tokenizer, recipe)
    assert trained_text(tokenizer, encoded.examples[0]) == f"Paris.{tokenizer.eos_token}"


def test_chat_prompt_is_the_generation_prompt(model_path):
    recipe = recipe_for("chat", data={"path": "x.jsonl", "format": "messages"})
    tokenizer = tokenizer_for(model_path, recipe)
    example = encode_rows(rows_of(CHAT_ROWS[1:]), tokenizer, recipe).examples[0]
    prompt = tokenizer.apply_chat_template(
        alpaca_to_messages({"instruction": "Opposite of hot?", "output": ""})[:1],
        add_generation_prompt=True,
        tokenize=False,
    )
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE)
    assert example.input_ids[:first] == tokenizer(prompt, add_special_tokens=False)["input_ids"]


def test_special_tokens_are_one_id_each(model_path):
    recipe = recipe_for("special_tokens")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    before = len(tokenizer)
    assert prepare_tokenizer(tokenizer, recipe) == ["<|instruction|>", "<|input|>", "<|response|>"]
    assert len(tokenizer) == before + 3
    example = encode_rows(rows_of(ALPACA_ROWS[:1]), tokenizer, recipe).examples[0]
    for marker in ("<|instruction|>", "<|input|>", "<|response|>"):
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] in example.input_ids


LONG = [
    {"instruction": "word " * 80, "input": "", "output": "short answer"},
    {"instruction": "Hi", "input": "", "output": "ok"},
]


def test_overflow_drop_counts(tiny_path):
    recipe = recipe_for("alpaca", max_length=40)
    encoded = encode_rows(rows_of(LONG), tokenizer_for(tiny_path, recipe), recipe)
    assert [e.row for e in encoded.examples] == [2]
    assert encoded.stats.dropped == 1 and encoded.stats.dropped_rows == [1] and encoded.stats.truncated == 0


def test_overflow_truncate_prompt_keeps_markers_and_answer(model_path):
    recipe = recipe_for("alpaca", max_length=40, on_overflow="truncate_prompt")
    tokenizer = tokenizer_for(model_path, recipe)
    encoded = encode_rows(rows_of(LONG), tokenizer, recipe)
    example = encoded.examples[0]
    assert example.truncated and len(example.input_ids) == 40 and encoded.stats.truncated == 1
    text = tokenizer.decode(example.input_ids)
    assert text.count("### Instruction:") == 1 and "### Response:\n" in text
    assert trained_text(tokenizer, example) == "short answer" + tokenizer.eos_token


def test_overflow_answer_too_long_is_dropped_not_cut(tiny_path):
    recipe = recipe_for("alpaca", max_length=12, on_overflow="truncate_prompt")
    rows = [{"instruction": "Hi", "input": "", "output": "a long answer " * 10}]
    encoded = encode_rows(rows_of(rows), tokenizer_for(tiny_path, recipe), recipe)
    assert encoded.examples == [] and encoded.stats.dropped == 1


def test_overflow_error_names_row(tiny_path):
    recipe = recipe_for("alpaca", max_length=40, on_overflow="error")
    with pytest.raises(DataError, match=r"t.jsonl row 1: \d+ tokens, more than max_length 40"):
        encode_rows(rows_of(LONG), tokenizer_for(tiny_path, recipe), recipe)


def test_whitespace_traps_are_reported(smollm2_path):
    recipe = recipe_for("custom")
    tokenizer = tokenizer_for(smollm2_path, recipe)
    rows = [{"instruction": "Say hi", "input": "", "output": "hi "}, {"instruction": "x <|im_end|>", "output": "y"}]
    encoded = encode_rows(rows_of(rows), tokenizer, recipe_for("alpaca"))
    kinds = {w.kind: w.rows for w in encoded.warnings}
    assert kinds["answer_trailing_space"] == [1] and kinds["special_token_in_text"] == [2]
    trailing_space = Recipe.model_validate(
        {"model": {"name": "x"}, "data": {"path": "x.jsonl"}, "template": {"prompt": "Q: {instruction}\nA: "}}
    )
    encoded = encode_rows(rows_of(ALPACA_ROWS), tokenizer, trailing_space)
    kinds = {w.kind: w.rows for w in encoded.warnings}
    assert kinds["prompt_trailing_space"] == [1, 2, 3, 4] and "boundary_merge" in kinds


def test_clean_template_has_no_warnings(smollm2_path):
    recipe = recipe_for("alpaca")
    encoded = encode_rows(rows_of(ALPACA_ROWS), tokenizer_for(smollm2_path, recipe), recipe)
    assert encoded.warnings == []
