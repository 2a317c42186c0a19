"""Generation, chat, eval and merge on real (tiny) runs: same prompt tokens as training, a memorised answer comes
back and stops at EOS, LoRA merges to the same greedy outputs."""

from __future__ import annotations

import json

import pytest
from conftest import ALPACA_ROWS, CHAT_ROWS, write_jsonl
from recipes import recipe_file
from typer.testing import CliRunner

from sft_cli.cli.app import app
from sft_cli.data.rows import load_rows
from sft_cli.encoding.encode import IGNORE, encode_rows
from sft_cli.recipe.schema import load_recipe
from sft_cli.runs.evaluate import Score, eval_recipe
from sft_cli.runs.generate import Sampling, generate, load_run, prompt_token_ids
from sft_cli.training.run import train

runner = CliRunner()
MEMORISE = {"max_steps": 80, "learning_rate": 5e-3, "batch_size": 4}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_path):
    tmp = tmp_path_factory.mktemp("full")
    return train(load_recipe(recipe_file(tmp, tiny_path, rows=ALPACA_ROWS, training=MEMORISE))).run_dir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_path):
    tmp = tmp_path_factory.mktemp("lora")
    path = recipe_file(
        tmp,
        tiny_path,
        rows=ALPACA_ROWS,
        template="special_tokens",
        lora={"r": 8, "alpha": 16},
        training={**MEMORISE, "max_steps": 30, "learning_rate": 1e-2},
    )
    return train(load_recipe(path)).run_dir


def test_prompt_tokens_equal_training_prompt_tokens(full_run, tmp_path):
    run = load_run(full_run)
    data = write_jsonl(tmp_path / "rows.jsonl", ALPACA_ROWS)
    recipe = eval_recipe(full_run, data)
    encoded = encode_rows(load_rows(recipe), run.tokenizer, recipe)
    for row, example in zip(load_rows(recipe).rows, encoded.examples):
        first = next(i for i, label in enumerate(example.labels) if label != IGNORE)
        assert prompt_token_ids(run, row.fields) == example.input_ids[:first]


@pytest.mark.parametrize("family, chat", [("qwen3", "multi"), ("mistral-nemo", "system")])
def test_chat_prompt_ids_equal_training_for_templates_that_rewrite_history(tmp_path, tiny_path, family, chat):
    """Qwen3 (think block only in the last turn) and Mistral (system message moved into the last user turn): the
    prompt `sft generate` builds is, id for id, the one the last turn was trained after."""
    import shutil

    from families import CHATS, FAMILIES, build_family_tokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_path, model)
    build_family_tokenizer(FAMILIES[family], tiny_path, model)
    path = recipe_file(tmp_path, model, rows=[CHATS[chat]], template="chat", max_length=512, training={"max_steps": 2})
    run = load_run(train(load_recipe(path)).run_dir)
    assert set(run.options.stop_tokens) == set(FAMILIES[family].stops)
    recipe = load_recipe(path).recipe
    rows = load_rows(recipe)
    ending = CHATS[chat]["messages"][-1]["content"] + FAMILIES[family].eos
    last_turn = [
        e
        for e in encode_rows(rows, run.tokenizer, recipe).examples
        if run.tokenizer.decode([t for t, lb in zip(e.input_ids, e.labels) if lb != IGNORE]).endswith(ending)
    ]
    assert len(last_turn) == 1
    labels = last_turn[0].labels
    start = max(i for i in range(len(labels)) if labels[i] != IGNORE and (i == 0 or labels[i - 1] == IGNORE))
    assert prompt_token_ids(run, rows.rows[0].fields) == last_turn[0].input_ids[:start]


def test_memorised_answers_come_back_and_stop_at_eos(full_run):
    run = load_run(full_run)
    answers = generate(run, ALPACA_ROWS, Sampling(max_new_tokens=20))
    correct = sum(a == r["output"] for a, r in zip(answers, ALPACA_ROWS))
    assert correct >= 3, answers  # and nothing after the answer: generation stopped at EOS


def test_generate_command_single_and_file(full_run, tmp_path):
    row = ALPACA_ROWS[3]
    result = runner.invoke(app, ["generate", str(full_run), row["instruction"], "--input", row["input"]])
    assert result.exit_code == 0 and result.output.strip() == row["output"], result.output
    rows = write_jsonl(tmp_path / "ask.jsonl", [{k: v for k, v in r.items() if k != "output"} for r in ALPACA_ROWS])
    target = tmp_path / "answers.jsonl"
    assert runner.invoke(app, ["generate", str(full_run), "--file", str(rows), "-o", str(target)]).exit_code == 0
    written = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(written) == 4 and all("generated" in w and "instruction" in w for w in written)
    again = runner.invoke(app, ["generate", str(full_run), "--file", str(rows), "-o", str(target)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_chat_repl_driven_by_piped_input(full_run):
    row = ALPACA_ROWS[1]
    result = runner.invoke(
        app,
        ["chat", str(full_run), "--max-new-tokens", "20"],
        input=f"{row['instruction']}\n/reset\n/exit\nnever read\n",
    )
    assert result.exit_code == 0, result.output
    assert f"> {row['output']}" in result.output and result.output.count("> ") == 1


def test_chat_keeps_multi_turn_history(tmp_path, tiny_path):
    path = recipe_file(
        tmp_path, tiny_path, rows=CHAT_ROWS, template="chat", data={"format": "messages"}, training={"max_steps": 2}
    )
    run_dir = train(load_recipe(path)).run_dir
    run = load_run(run_dir)
    history = [
        {"role": "user", "content": "Capital of Japan?"},
        {"role": "assistant", "content": "Tokyo."},
        {"role": "user", "content": "And France?"},
        {"role": "assistant", "content": ""},
    ]
    ids = prompt_token_ids(run, {"messages": history})
    assert run.tokenizer.decode(ids).count("<|im_start|>assistant") == 2  # the whole history, then the new turn
    result = runner.invoke(app, ["chat", str(run_dir), "--max-new-tokens", "3"], input="hi\nhello again\n")
    assert result.exit_code == 0 and result.output.count("> ") == 2, result.output
    # one instruction on the command line is one user turn, answered after the run's generation prompt
    one = runner.invoke(app, ["generate", str(run_dir), "Capital of Japan?", "--max-new-tokens", "3"])
    assert one.exit_code == 0, one.output
    asked = prompt_token_ids(run, {"instruction": "Capital of Japan?", "input": ""})
    assert asked == prompt_token_ids(run, {"messages": history[:1] + [{"role": "assistant", "content": ""}]})


def test_eval_scores_tuned_above_base(full_run, tmp_path):
    data = write_jsonl(tmp_path / "eval.jsonl", [{**r, "task": "t"} for r in ALPACA_ROWS])
    result = runner.invoke(
        app, ["eval", str(full_run), "--data", str(data), "--base", "--json", "--max-new-tokens", "20"]
    )
    assert result.exit_code == 0, result.output
    base, tuned = json.loads(result.stdout)["results"]
    assert base["model"].endswith("(base)") and tuned["exact_match"] >= 0.75 > base["exact_match"]
    assert tuned["loss"] < base["loss"] and tuned["by_task"]["t"]["examples"] == 4


def test_eval_of_several_files_scores_each_and_all(full_run, tmp_path):
    seen = write_jsonl(tmp_path / "seen.jsonl", ALPACA_ROWS)
    unseen = [{"instruction": "Name a colour.", "input": "", "output": "Turquoise, or perhaps teal."}]
    new = write_jsonl(tmp_path / "new.jsonl", unseen)
    result = runner.invoke(app, ["eval", str(full_run), "--data", str(seen), "--data", str(new), "--json"])
    assert result.exit_code == 0, result.output
    (tuned,) = json.loads(result.stdout)["results"]
    per_file = tuned["by_source"]
    assert list(per_file) == ["seen", "new"] and tuned["examples"] == 5
    assert per_file["seen"]["exact_match"] >= 0.75 and per_file["new"]["exact_match"] == 0
    assert per_file["seen"]["loss"] < tuned["loss"] < per_file["new"]["loss"]
    tokens = per_file["seen"]["answer_tokens"] + per_file["new"]["answer_tokens"]
    weighted = sum(f["loss"] * f["answer_tokens"] for f in per_file.values()) / tokens
    assert tuned["answer_tokens"] == tokens and tuned["loss"] == pytest.approx(weighted, abs=1e-3)
    shown = runner.invoke(app, ["eval", str(full_run), "--data", str(seen), "--data", str(new)])
    assert "loss / exact · seen" in shown.output and "loss / exact · new" in shown.output


@pytest.mark.parametrize(
    "answer, expected, exact, contains",
    [
        ("  Bonjour   !\n", "Bonjour !", 1, 1),
        ("The answer is 42.", "42", 0, 1),
        ("41", "42", 0, 0),
        ("<think>\n6 times 7 is 42\n</think>\n\n42", "42", 1, 1),
        ("<think>\n\n</think>\n\n41", "42", 0, 0),
    ],
)
def test_score_normalises_whitespace_and_scores_the_final_answer(answer, expected, exact, contains):
    score = Score()
    score.add(answer, expected)
    assert (score.exact, score.contains) == (exact, contains)


def test_merge_gives_the_same_greedy_outputs(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    merged_dir = tmp_path / "merged"
    assert runner.invoke(app, ["merge", str(lora_run), "-o", str(merged_dir)]).exit_code == 0
    assert (merged_dir / "model.safetensors").exists() and AutoModelForCausalLM.from_pretrained(merged_dir)
    sampling = Sampling(max_new_tokens=12)
    assert generate(load_run(merged_dir), ALPACA_ROWS, sampling) == generate(load_run(lora_run), ALPACA_ROWS, sampling)
    again = runner.invoke(app, ["merge", str(lora_run), "-o", str(merged_dir)])
    assert again.exit_code == 2 and "already holds an earlier merged model" in again.output


def test_merge_refuses_a_full_run(full_run, tmp_path):
    result = runner.invoke(app, ["merge", str(full_run), "-o", str(tmp_path / "m")])
    assert result.exit_code == 2 and "not a LoRA run" in result.output


def test_not_a_run_folder(tmp_path):
    result = runner.invoke(app, ["generate", str(tmp_path), "hi"])
    assert result.exit_code == 2 and "not an sft run folder" in result.output
