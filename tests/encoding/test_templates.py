"""Template texts are exact, and their segments say what is prompt, marker and answer."""

from __future__ import annotations

import pytest

from sft_cli.encoding.rendered import Rendered
from sft_cli.encoding.templates import render, render_prompt
from sft_cli.recipe.sections import CustomTemplate

ROW = {"instruction": "Answer the question.", "input": "Which is the largest ocean?", "output": "The Pacific Ocean."}
NO_INPUT = {**ROW, "input": ""}


class FakeTokenizer:
    eos_token = "</s>"
    chat_template = None


@pytest.mark.parametrize(
    "template, row, text",
    [
        (
            "alpaca",
            ROW,
            "### Instruction:\nAnswer the question.\n### Input:\nWhich is the largest ocean?\n"
            "### Response:\nThe Pacific Ocean.</s>",
        ),
        ("alpaca", NO_INPUT, "### Instruction:\nAnswer the question.\n### Response:\nThe Pacific Ocean.</s>"),
        (
            "human_assistant",
            ROW,
            "### Human:\nAnswer the question.\nWhich is the largest ocean?\n\n### Assistant:\nThe Pacific Ocean.</s>",
        ),
        ("human_assistant", NO_INPUT, "### Human:\nAnswer the question.\n\n### Assistant:\nThe Pacific Ocean.</s>"),
        (
            "special_tokens",
            ROW,
            "<|instruction|> Answer the question. <|input|> Which is the largest ocean? "
            "<|response|> The Pacific Ocean.</s>",
        ),
        ("special_tokens", NO_INPUT, "<|instruction|> Answer the question. <|response|> The Pacific Ocean.</s>"),
    ],
)
def test_exact_texts(template, row, text):
    [rendered] = render(template, row, FakeTokenizer())
    assert rendered.text == text
    assert "".join(s.text for s in rendered.segments if s.kind == "answer") == "The Pacific Ocean.</s>"
    assert [s.text for s in rendered.segments if s.kind == "answer" and s.plain] == ["The Pacific Ocean."]
    assert rendered.prompt == text.removesuffix("The Pacific Ocean.</s>")
    assert render_prompt(template, row, FakeTokenizer()).text == rendered.prompt


def test_user_content_is_prompt_and_template_text_is_marker():
    [rendered] = render("alpaca", ROW, FakeTokenizer())
    kinds = [(s.kind, s.text) for s in rendered.segments]
    assert ("prompt", "Answer the question.") in kinds and ("prompt", "Which is the largest ocean?") in kinds
    assert ("marker", "\n### Response:\n") in kinds


def test_custom_template_fields_and_response():
    template = CustomTemplate(prompt="Q ({task}): {instruction}\nA:", response=" {output}")
    [rendered] = render(template, {**ROW, "task": "geo"}, FakeTokenizer())
    assert rendered.text == "Q (geo): Answer the question.\nA: The Pacific Ocean.</s>"
    assert rendered.prompt == "Q (geo): Answer the question.\nA:"


def test_custom_template_unknown_field_is_a_clear_error():
    from sft_cli.errors import SftError

    with pytest.raises(SftError, match=r"placeholder \{question\}"):
        render(CustomTemplate(prompt="{question}"), ROW, FakeTokenizer())


def test_rendered_prompt_of_multi_answer_is_before_last_answer():
    from sft_cli.encoding.rendered import Segment

    r = Rendered((Segment("u1", "prompt"), Segment("a1", "answer"), Segment("u2", "prompt"), Segment("a2", "answer")))
    assert r.prompt == "u1a1u2"
