"""The fault suite: what a user gets wrong, or what goes wrong around a run, ends in one clear error (exit 2, one
`error:` line naming the file, key, line or row, no traceback) or in the right behaviour, and nothing is lost.

Recipe faults run `sft validate`, data and model faults `sft preview` (tiny model), run faults `sft train`, `sft
prepare`, `sft generate` and `sft eval`, some as real processes (killed, run twice at once)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ALPACA_ROWS, CHAT_ROWS, write_jsonl
from typer.testing import CliRunner

from sft_cli.cli.app import app

runner = CliRunner()
SFT = [sys.executable, "-m", "sft_cli"]


def clear_error(result, *needles: str) -> None:
    output = result.output if hasattr(result, "output") else result.stdout + result.stderr
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert code == 2, output
    assert sum(line.startswith("error:") for line in output.splitlines()) == 1, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output, output


def recipe_at(folder: Path, model: Path, rows=ALPACA_ROWS, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", rows)
    recipe = {"model": {"name": str(model)}, "data": {"path": "train.jsonl"}, "max_length": 64, **fields}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


# --- recipe faults: `sft validate`, no model loaded ----------------------------------------------------------

# "billion laughs": nine levels of ten aliases each, 10^9 values once expanded
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join(['*' + a] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)
RECIPE_FAULTS = [
    (b"model:\n  name: m\n# caf\xe9\ndata: {path: train.jsonl}\n", "line 3: not UTF-8 text (byte 0xe9 at column 6)"),
    ("- model\n- data\n", "the top level must be a mapping"),
    ("model: {name: m\ndata: [", "YAML syntax error"),
    ("model: {name: m}\ndata: {path: train.jsonl}\ntraning: {epochs: 1}\n", "did you mean 'training'?"),
    ("model: {name: m}\nmodel: {name: n}\ndata: {path: train.jsonl}\n", "duplicate key"),
    ("model: {name: m}\ndata: {path: train.jsonl}\ntraining: {learning_rate: fast}\n", "training.learning_rate"),
    ("model: {name: m}\ndata: {path: train.jsonl}\ntraining: {learning_rate: 1e400}\n", "finite number"),
    ("model: {name: m}\ndata: {path: train.jsonl}\nx: &loop [*loop]\n", "line 3: an alias refers to itself"),
    ("model: {name: m}\ndata: {path: train.jsonl}\n" + BOMB, "aliases expand this document past 100,000 values"),
    ("model: {name: m}\ndata: {path: train.jsonl}\ntraining: {epochs: -1}\n", "training.epochs"),
    ("model: {name: m}\ndata: {path: train.jsonl}\ntemplate: alpacca\n", "did you mean 'alpaca'?"),
    ("data: {path: train.jsonl}\n", "model: required key is missing"),
    ("model: {name: m}\ndata: {path: missing.jsonl}\n", "data.path: not found"),
    ("model: {name: m}\ndata: {path: train.jsonl}\noutput: {dir: train.jsonl}\n", "is a file, not a folder"),
    ("model: {name: m}\ndata: {path: train.jsonl}\ntraining: {early_stopping: {}}\n", "needs eval data"),
    (
        "model: {name: m}\ndata: {path: train.jsonl, eval_fraction: 0.2}\n"
        "training: {early_stopping: {metric: eval_los}}\n",
        "'eval_los' is not logged by this run; did you mean 'eval_loss'?",
    ),
    ("model: {name: m}\ndata: {path: train.jsonl}\ntraining: {packing: true, padding_free: false}\n", "packing"),
    ("model: {name: m}\ndata: {path: train.jsonl, format: messages}\n", "needs template: chat"),
    ("model: {name: m}\ndata: {path: train.jsonl}\ntrainer_args: {lerning_rate: 1}\n", "lerning_rate"),
    ("model: {name: ./no-such-model}\ndata: {path: train.jsonl}\n", "model.name: not found"),
]


@pytest.mark.parametrize(("text", "needle"), RECIPE_FAULTS, ids=[n for _, n in RECIPE_FAULTS])
def test_recipe_faults(tmp_path, text, needle):
    write_jsonl(tmp_path / "train.jsonl", ALPACA_ROWS)
    path = tmp_path / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    clear_error(runner.invoke(app, ["validate", str(path)]), needle)


def test_a_missing_recipe_and_a_bad_override(tmp_path, tiny_path):
    clear_error(runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")]), "file not found")
    path = recipe_at(tmp_path, tiny_path)
    clear_error(runner.invoke(app, ["validate", str(path), "--set", "training"]), "expected key.path=value")


# --- data faults: `sft preview` on the tiny model ------------------------------------------------------------


def rows_file(folder: Path, name: str, content) -> str:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, list):
        write_jsonl(path, content)
    else:
        path.write_text(content, encoding="utf-8")
    return name


DATA_FAULTS = [
    ("empty.jsonl", "", {}, "no rows"),
    ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": \n', {}, "bad.jsonl line 2: invalid JSON"),
    ("list.jsonl", "[1, 2]\n", {}, "line 1: expected a JSON object"),
    ("latin1.jsonl", b'{"instruction": "caf\xe9", "output": "x"}\n', {}, "latin1.jsonl line 1: not UTF-8"),
    ("notes.md", "hello\n", {}, "unsupported file type '.md'"),
    ("no-output.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}], {}, "row 2: missing field"),
    ("typed.jsonl", [{"instruction": "a", "output": 5}], {}, "row 1: field 'output' must be text"),
    ("empty-answer.jsonl", [{"instruction": "a", "output": "  "}], {}, "(the answer) is empty"),
    ("qa.jsonl", [{"question": "a", "answer": "b"}], {}, "cannot tell the data format"),
    (
        "qa2.jsonl",
        [{"question": "a", "answer": "b"}],
        {"instruction": "question", "output": "reply"},
        "data.columns.output: the file has no column 'reply'",
    ),  # fmt: skip
    (
        "qa3.jsonl",
        [{"question": "a", "answer": "b", "note": "c"}],
        {"instruction": "question", "output": "answer", "hint": "note"},
        "data.columns.hint: 'hint' is not a field of the alpaca format",
    ),  # fmt: skip
    (
        "both.jsonl",
        [{"instruction": "a", "output": "b", "answer": "c"}],
        {"output": "answer"},
        "maps column 'answer' to 'output', but the file has a 'output' column too",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("name", "content", "columns", "needle"), DATA_FAULTS, ids=[d[0] for d in DATA_FAULTS])
def test_data_faults(tmp_path, tiny_path, name, content, columns, needle):
    data = {"path": rows_file(tmp_path, name, content), **({"columns": columns} if columns else {})}
    path = recipe_at(tmp_path, tiny_path, data=data)
    clear_error(runner.invoke(app, ["preview", str(path), "--no-cache"]), needle)


def test_a_folder_of_data_files_is_read_and_any_other_folder_is_explained(tmp_path, tiny_path):
    folder = tmp_path / "rows"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", ALPACA_ROWS[:2])
    write_jsonl(folder / "b.jsonl", ALPACA_ROWS[2:])
    (folder / "README.md").write_text("not data")
    path = recipe_at(tmp_path, tiny_path, data={"path": "rows"})
    result = runner.invoke(app, ["preview", str(path), "--json", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stats"]["examples"] == 4
    (tmp_path / "empty").mkdir()
    path = recipe_at(tmp_path, tiny_path, data={"path": "empty"})
    clear_error(runner.invoke(app, ["preview", str(path)]), "a data folder holds .jsonl, .json, .csv, .parquet or .txt")


def test_a_chat_that_ends_on_a_user_turn_is_a_counted_warning(tmp_path, tiny_path):
    ending = {"messages": CHAT_ROWS[1]["messages"] + [{"role": "user", "content": "And cold?"}]}
    path = recipe_at(tmp_path, tiny_path, CHAT_ROWS + [ending], template="chat", max_length=256)
    result = runner.invoke(app, ["preview", str(path), "--json", "--no-cache"])
    assert result.exit_code == 0, result.output
    warnings = {w["kind"]: w for w in json.loads(result.stdout)["warnings"]}
    assert warnings["ends_without_answer"]["rows"] == [3] and warnings["ends_without_answer"]["count"] == 1


def test_a_custom_template_placeholder_the_rows_lack(tmp_path, tiny_path):
    path = recipe_at(tmp_path, tiny_path, template={"prompt": "Q: {question}\nA: "})
    clear_error(runner.invoke(app, ["preview", str(path)]), "placeholder {question} is not a field of the rows")


def test_a_row_too_long_under_on_overflow_error_is_named(tmp_path, tiny_path):
    rows = ALPACA_ROWS + [{"instruction": "word " * 200, "output": "x"}]
    path = recipe_at(tmp_path, tiny_path, rows, on_overflow="error")
    clear_error(runner.invoke(app, ["preview", str(path), "--no-cache"]), "row 5")


# --- hub names offline: fail fast, never a hub lookup for a local-looking name --------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["preview", "RECIPE", "--set", "model.name=no-such-org/no-such-model"], "no-such-org/no-such-model"),
        (["preview", "RECIPE", "--set", "data.path=no-such-org/no-such-dataset"], "hub is out of reach"),
        (["generate", "RUN", "--file", "missing-rows.jsonl"], "missing-rows.jsonl: not found"),
    ],
)
def test_offline_hub_names_and_missing_local_files_fail_fast(tmp_path, tiny_path, args, needle, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # no network: as on a machine offline
    monkeypatch.chdir(tmp_path)
    path = recipe_at(tmp_path, tiny_path)
    run = tmp_path / "run"
    if "RUN" in args:
        shutil.copytree(tiny_path, run)
        from sft_cli.recipe.schema import EncodingSpec
        from sft_cli.recipe.sections import ModelSection
        from sft_cli.runs.record import RunRecord, write_record

        write_record(run, RunRecord(EncodingSpec(), ("<|im_end|>",), ModelSection(name=str(tiny_path))))
    args = [str(path) if a == "RECIPE" else str(run) if a == "RUN" else a for a in args]
    started = time.perf_counter()
    result = runner.invoke(app, args)
    assert time.perf_counter() - started < 5
    clear_error(result, needle)


# --- model faults ---------------------------------------------------------------------------------------------


def test_a_model_folder_without_a_tokenizer(tmp_path, tiny_path):
    model = tmp_path / "weights-only"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_path / name, model)
    clear_error(runner.invoke(app, ["preview", str(recipe_at(tmp_path, model))]), "cannot load the tokenizer")


def test_a_truncated_weights_file_is_named(tmp_path, tiny_path):
    model = tmp_path / "damaged"
    shutil.copytree(tiny_path, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    path = recipe_at(tmp_path, model, training={"max_steps": 1})
    clear_error(runner.invoke(app, ["train", str(path), "--set", f"output.dir={tmp_path / 'run'}"]),
                f"{weights}: the weights file is damaged", "copy or download the model again")  # fmt: skip
    assert not (tmp_path / "run").exists()  # nothing left behind, no lock either


@pytest.mark.parametrize(
    ("setting", "needle"),
    [("training.precision=fp16", "fp16 needs a CUDA GPU"), ("lora.load_in_4bit=true", "needs a CUDA GPU")],
)
def test_gpu_only_settings_on_cpu(tmp_path, tiny_path, setting, needle):
    path = recipe_at(tmp_path, tiny_path)
    clear_error(runner.invoke(app, ["train", str(path), "--set", setting, "--dry-run"]), needle)


# --- run faults -----------------------------------------------------------------------------------------------


def train_recipe(folder: Path, model: Path, steps: int, **training) -> Path:
    rows = ALPACA_ROWS * 4
    settings = {"max_steps": steps, "batch_size": 2, "logging_steps": 1, "save_steps": 4, "learning_rate": 3e-3,
                "lr_scheduler": "constant", "warmup_ratio": 0.0, "save_total_limit": 50, **training}  # fmt: skip
    return recipe_at(folder, model, rows, training=settings, output={"dir": "run"})


def logged_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]


def start(path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*SFT, "train", str(path), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=path.parent)  # fmt: skip


def wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sigkill_then_resume_logs_each_step_once_and_ends_as_an_uninterrupted_run(tmp_path, tiny_path):
    from safetensors.torch import load_file

    straight = train_recipe(tmp_path / "straight", tiny_path, 40)
    assert subprocess.run([*SFT, "train", str(straight)], capture_output=True).returncode == 0
    path = train_recipe(tmp_path / "killed", tiny_path, 40)
    run = path.parent / "run"
    process = start(path)
    checkpoint = run / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    wait_for(lambda: checkpoint.exists() and (run / "metrics.jsonl").exists() and max(logged_steps(run)) >= 6)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (run / ".lock").exists() and not (run / "model.safetensors").exists()  # killed: a stale lock, no model
    resumed = subprocess.run([*SFT, "train", str(path), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert logged_steps(run) == list(range(1, 41))  # the steps after the checkpoint were logged again, once
    assert not (run / ".lock").exists()
    a, b = load_file(straight.parent / "run" / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(a[key].allclose(b[key], atol=1e-5) for key in a)


def test_a_second_train_into_a_held_folder_names_the_holder(tmp_path, tiny_path):
    path = train_recipe(tmp_path, tiny_path, 100000)
    run = tmp_path / "run"
    first = start(path)
    wait_for(lambda: (run / "metrics.jsonl").exists())  # the first is training
    second = subprocess.run([*SFT, "train", str(path), "--overwrite"], capture_output=True, text=True)
    clear_error(second, "is in use by another sft run", f"pid {first.pid} on {socket.gethostname()}")
    assert first.poll() is None  # the first run goes on, its folder untouched
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    steps = logged_steps(run)
    assert steps == list(range(1, len(steps) + 1)) and not (run / ".lock").exists()


def test_a_stale_lock_is_taken_over(tmp_path, tiny_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    run = tmp_path / "run"
    run.mkdir()
    holder = {"pid": gone.pid, "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}
    (run / ".lock").write_text(json.dumps(holder))
    result = runner.invoke(app, ["train", str(train_recipe(tmp_path, tiny_path, 2))])
    assert result.exit_code == 0, result.output
    assert (run / "model.safetensors").exists() and not (run / ".lock").exists()


def test_a_lock_held_on_another_host_is_respected(tmp_path, tiny_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 1, "host": "another-host", "since": "2026-01-01T00:00:00"}))
    clear_error(runner.invoke(app, ["train", str(train_recipe(tmp_path, tiny_path, 2))]), "on another-host")


@pytest.mark.parametrize("fault", ["no checkpoint", "no run", "holds a run", "read-only"])
def test_run_folder_faults(tmp_path, tiny_path, fault):
    path = train_recipe(tmp_path, tiny_path, 2, save_steps=100)
    if fault == "no checkpoint":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "metrics.jsonl").write_text("")  # a run killed before its first checkpoint
        clear_error(runner.invoke(app, ["train", str(path), "--resume"]), "has no checkpoint")
    elif fault == "no run":
        clear_error(runner.invoke(app, ["train", str(path), "--resume"]), "no run to resume")
    elif fault == "holds a run":
        assert runner.invoke(app, ["train", str(path)]).exit_code == 0
        clear_error(runner.invoke(app, ["train", str(path)]), "already holds a run", "--resume")
    else:
        result = runner.invoke(app, ["train", str(path), "--set", "output.dir=/sys/sft-run"])
        clear_error(result, "/sys/sft-run: cannot create the run folder")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_run_never_replaces_the_recipe_folder_or_a_folder_of_other_files(tmp_path, tiny_path, overwrite):
    path = train_recipe(tmp_path, tiny_path, 2)
    (tmp_path / "notes.txt").write_text("my notes")
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["train", str(path), "--set", "output.dir=.", *overwrite])
    clear_error(result, f"output.dir {tmp_path} holds", "recipe.yaml, which sft must not change")
    others = tmp_path / "others"
    others.mkdir()
    (others / "keep.txt").write_text("not a run")
    result = runner.invoke(app, ["train", str(path), "--set", f"output.dir={others}", *overwrite])
    clear_error(result, "holds files sft did not write (keep.txt)", "--overwrite replaces only a run folder")
    assert snapshot(tmp_path) == {**before, "others/keep.txt": b"not a run"}


@pytest.fixture(scope="module")
def tiny_lora_run(tmp_path_factory, tiny_path):
    folder = tmp_path_factory.mktemp("faults-lora-run")
    path = recipe_at(
        folder, tiny_path, training={"max_steps": 2, "batch_size": 2}, output={"dir": "run"}, lora={"r": 4}
    )
    assert runner.invoke(app, ["train", str(path)]).exit_code == 0
    return folder / "run"


@pytest.mark.parametrize("where", ["RUN", "RUN/inside", "PARENT"])
@pytest.mark.parametrize("command", ["export", "merge"])
def test_export_and_merge_never_write_over_the_run_folder(tiny_lora_run, command, where):
    run = tiny_lora_run
    output = {"RUN": run, "RUN/inside": run / "inside", "PARENT": run.parent}[where]
    before = snapshot(run.parent)
    args = ["export", str(run), "--format", "hf", "--no-check"] if command == "export" else ["merge", str(run)]
    clear_error(runner.invoke(app, [*args, "-o", str(output), "--overwrite"]), f"--output {output}", "must not change")
    assert snapshot(run.parent) == before


def test_export_overwrite_replaces_only_an_earlier_export(tiny_run, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("months of work")
    args = ["export", str(tiny_run), "--format", "hf", "--no-check", "-o", str(target), "--overwrite"]
    clear_error(runner.invoke(app, args), "holds files sft did not write (thesis.tex)")
    assert (target / "thesis.tex").read_text() == "months of work"
    exported = tmp_path / "exported"
    assert runner.invoke(app, [*args[:-2], str(exported)]).exit_code == 0
    clear_error(runner.invoke(app, [*args[:-2], str(exported)]), "already holds an earlier export", "--overwrite")
    assert runner.invoke(app, [*args[:-2], str(exported), "--overwrite"]).exit_code == 0


def test_resume_with_a_changed_contract_is_refused(tmp_path, tiny_path):
    path = train_recipe(tmp_path, tiny_path, 4)
    assert runner.invoke(app, ["train", str(path)]).exit_code == 0
    run = tmp_path / "run"
    before = snapshot(run)
    args = ["train", str(path), "--resume", "--set", "training.max_steps=6"]
    result = runner.invoke(app, [*args, "--set", "template=human_assistant"])
    clear_error(result, "--resume: the recipe changed since", 'template: "alpaca" -> "human_assistant"', "--overwrite")
    clear_error(runner.invoke(app, args[:3]), "already finished (completed at step 4)", "training.max_steps above 4")
    assert snapshot(run) == before  # the run's record still names the template it was trained with


def test_a_damaged_last_checkpoint_resumes_from_the_one_before(tmp_path, tiny_path):
    path = train_recipe(tmp_path, tiny_path, 8)
    assert runner.invoke(app, ["train", str(path)]).exit_code == 0
    run = tmp_path / "run"
    (run / "checkpoints" / "checkpoint-8" / "trainer_state.json").unlink()  # cut off mid-save
    result = runner.invoke(app, ["train", str(path), "--resume", "--set", "training.max_steps=10"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "run.json").read_text())["plan"]["resume_from"].endswith("checkpoint-4")


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "3M", read_only: bool = False):
    """A tmpfs of `size` mounted at `folder` (read-only if asked), unmounted after; skips where mounting needs root."""
    folder.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)])  # lazily: an open handle must not keep it mounted


def test_a_full_disk_while_saving_is_one_error_and_the_run_stays_resumable(tmp_path, tiny_path):
    with small_disk(tmp_path / "small") as small:
        path = train_recipe(tmp_path, tiny_path, 12, save_steps=2)
        result = runner.invoke(app, ["train", str(path), "--set", f"output.dir={small / 'run'}"])
        clear_error(result, f"{small / 'run'}: no space left on the device", "--resume continues from")
        assert not (small / "run" / "model.safetensors").exists() and not (small / "run" / ".lock").exists()


def long_rows(count: int) -> list[dict]:
    return [{"instruction": f"Repeat {i}: " + "word " * 60, "input": "", "output": "echo " * 40} for i in range(count)]


@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_prepare_on_a_full_or_read_only_cache_is_one_error_and_leaves_nothing(tmp_path, tiny_path, disk):
    with small_disk(tmp_path / "cache", "256k", read_only=disk == "read-only") as cache:
        data = {"path": "train.jsonl", "cache_dir": str(cache)}
        path = recipe_at(tmp_path / "recipe", tiny_path, long_rows(3000), data=data, max_length=1024)
        result = runner.invoke(app, ["prepare", str(path)])
        if disk == "full":
            clear_error(result, f"{cache}: no space left on the device while preparing the train rows", "MB free")
        else:
            clear_error(result, f"{cache}: cannot write here while creating a folder (Read-only file system)")
        assert not list(cache.iterdir())  # no partial entry


def test_every_writer_refuses_a_read_only_folder_before_its_work(tiny_lora_run, tmp_path):
    write_jsonl(tmp_path / "rows.jsonl", ALPACA_ROWS)
    with small_disk(tmp_path / "ro", "1M", read_only=True) as folder:
        for args, doing in [
            (["export", str(tiny_lora_run), "--format", "hf", "--no-check"], "creating a folder"),
            (["merge", str(tiny_lora_run)], "creating a folder"),
            (["generate", str(tiny_lora_run), "--file", str(tmp_path / "rows.jsonl")], "writing the answers"),
        ]:
            result = runner.invoke(app, [*args, "-o", str(folder / "out")])
            clear_error(result, f"{folder}: cannot write here while {doing} (Read-only file system)")
        result = runner.invoke(app, ["init", "-o", str(folder / "recipe.yaml")])
        clear_error(result, f"{folder}: cannot write here while writing the starter recipe (Read-only file system)")


def process_children(pid: int) -> list[int]:
    """The live child processes of `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_during_prepare_ends_its_workers_and_keeps_no_partial_entry(tmp_path, tiny_path):
    cache = tmp_path / "cache"
    data = {"path": "train.jsonl", "cache_dir": str(cache), "num_proc": 2}
    path = recipe_at(tmp_path / "recipe", tiny_path, long_rows(40000), data=data, max_length=1024)
    process = subprocess.Popen([*SFT, "prepare", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(process_children(process.pid)) >= 2 and list(cache.glob("*.partial-*")), seconds=120)
    workers = process_children(process.pid)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err, err[-3000:]
    wait_for(lambda: not any(alive(pid) for pid in workers), seconds=30)
    assert not list(cache.glob("*.partial-*")) and not list(cache.iterdir())


def test_a_run_folder_whose_tokenizer_asks_for_custom_code(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    config_path = run / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(tokenizer_class="MyTokenizer", auto_map={"AutoTokenizer": ["my_tokenizer.MyTokenizer", None]})
    config_path.write_text(json.dumps(config))
    (run / "my_tokenizer.py").write_text("raise SystemExit('custom code ran')\n")
    write_jsonl(tmp_path / "rows.jsonl", ALPACA_ROWS)
    for args in (["generate", str(run), "x"], ["eval", str(run), "--data", str(tmp_path / "rows.jsonl")]):
        clear_error(runner.invoke(app, args), f"{run}: its tokenizer asks to run custom code from the folder")


def test_a_run_that_fails_mid_training_leaves_the_process_as_it_was(tmp_path, tiny_path, monkeypatch):
    """The Ctrl-C handler and the CPU heap policy hold during training only: a step that raises leaves neither
    behind (the process lives on in notebooks and tests)."""
    import torch

    from sft_cli.recipe.schema import load_recipe
    from sft_cli.training.memory import CpuHeap
    from sft_cli.training.run import train
    from sft_cli.training.trainer import SftTrainer

    stops, stop, step = [], CpuHeap.stop, SftTrainer.training_step
    monkeypatch.setattr(CpuHeap, "stop", lambda heap: (stops.append(heap), stop(heap)))

    def failing_step(trainer, *args, **kwargs):
        if trainer.state.global_step == 2:
            raise RuntimeError("a fault in step 3")
        return step(trainer, *args, **kwargs)

    monkeypatch.setattr(SftTrainer, "training_step", failing_step)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError, match="a fault in step 3"):
        train(load_recipe(train_recipe(tmp_path, tiny_path, 6)))
    assert signal.getsignal(signal.SIGINT) is before
    assert len(stops) == (0 if torch.cuda.is_available() else 1)


def test_two_prepares_of_one_cache_entry_at_once(tmp_path, tiny_path):
    path = recipe_at(tmp_path, tiny_path, ALPACA_ROWS * 500, data={"path": "train.jsonl", "cache_dir": "cache"})
    both = [subprocess.Popen([*SFT, "prepare", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    for process in both:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    entries = [p for p in (tmp_path / "cache").iterdir()]
    assert len(entries) == 1 and (entries[0] / "stats.json").exists()
    result = runner.invoke(app, ["preview", str(path), "--json"])
    assert json.loads(result.stdout)["stats"]["examples"] == 2000 and json.loads(result.stdout)["stats"]["cached"]


def test_a_cache_entry_damaged_by_hand_is_built_again(tmp_path, tiny_path):
    path = recipe_at(tmp_path, tiny_path, data={"path": "train.jsonl", "cache_dir": "cache"})
    assert runner.invoke(app, ["prepare", str(path)]).exit_code == 0
    entry = next((tmp_path / "cache").iterdir())
    (entry / "data.arrow").unlink()
    result = runner.invoke(app, ["preview", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stats"]["cached"] is False and (entry / "data.arrow").exists()


def test_a_diverging_run_stops_with_one_error_and_saves_no_model(tmp_path, tiny_path):
    path = train_recipe(tmp_path, tiny_path, 12, learning_rate=1e30, save_steps=1)
    result = runner.invoke(app, ["train", str(path)])
    clear_error(result, "training diverged at step", "no final model was saved", "lower training.learning_rate")
    run = tmp_path / "run"
    assert not (run / "model.safetensors").exists() and not (run / ".lock").exists()
    assert json.loads((run / "run.json").read_text())["stop_reason"] == "diverged"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("loss") != r.get("loss") or r.get("grad_norm") != r.get("grad_norm") for r in logged)  # nan
    from safetensors.torch import load_file

    for checkpoint in (run / "checkpoints").glob("checkpoint-*"):  # what is kept is finite, so --resume is safe
        assert all(t.isfinite().all() for t in load_file(checkpoint / "model.safetensors").values()), checkpoint


def test_resume_never_picks_another_recipes_run_whose_name_starts_the_same(tmp_path, tiny_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = train_recipe(tmp_path / "a", tiny_path, 2)
    other = other.rename(tmp_path / "qwen-lr3.yaml")
    (tmp_path / "train.jsonl").write_bytes((tmp_path / "a" / "train.jsonl").read_bytes())
    assert runner.invoke(app, ["train", str(other), "--set", "output.dir=null"]).exit_code == 0
    assert len(list((tmp_path / "runs").glob("qwen-lr3-*"))) == 1
    mine = tmp_path / "qwen.yaml"
    mine.write_text(other.read_text())
    clear_error(runner.invoke(app, ["train", str(mine), "--resume", "--set", "output.dir=null"]), "no run to resume")


def test_a_lone_surrogate_in_a_row_is_named(tmp_path, tiny_path):
    (tmp_path / "train.jsonl").write_text('{"instruction": "a\\ud800b", "output": "c"}\n', encoding="utf-8")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": str(tiny_path)}, "data": {"path": "train.jsonl"}}))
    clear_error(
        runner.invoke(app, ["preview", str(path)]), "row 1", "field 'instruction' holds a lone UTF-16 surrogate"
    )


# --- generate and eval ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_path):
    folder = tmp_path_factory.mktemp("faults-run")
    assert runner.invoke(app, ["train", str(train_recipe(folder, tiny_path, 2))]).exit_code == 0
    return folder / "run"


def test_eval_rows_without_an_answer(tiny_run, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}])
    clear_error(runner.invoke(app, ["eval", str(tiny_run), "--data", str(data)]),
                "eval needs an answer (output, completion or a final assistant turn); row 2 has none")  # fmt: skip


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["generate", "RUN"], "give an instruction or --file"),
        (["generate", "RUN", "x", "--file", "f.jsonl"], "not both"),
        (["eval", "RUN", "--data", "missing.jsonl"], "--data: not found"),
        (["generate", "NOT_A_RUN", "x"], "not an sft run folder"),
    ],
)
def test_generate_and_eval_faults(tiny_run, tmp_path, args, needle):
    args = [str(tiny_run) if a == "RUN" else str(tmp_path) if a == "NOT_A_RUN" else a for a in args]
    clear_error(runner.invoke(app, args), needle)


@pytest.mark.parametrize("stdin", ["closed", "latin-1"])
def test_chat_with_stdin_closed_or_not_utf8(tiny_run, stdin):
    if stdin == "closed":
        result = subprocess.run([*SFT, "chat", str(tiny_run)], stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        closed = subprocess.run(f"{sys.executable} -m sft_cli chat {tiny_run} <&-", shell=True, capture_output=True)
        assert closed.returncode == 0 and b"Traceback" not in closed.stderr, closed.stderr
    else:
        result = subprocess.run([*SFT, "chat", str(tiny_run)], input=b"hello\ncaf\xe9\n", capture_output=True)
        result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
        clear_error(result, "stdin line 2: not UTF-8 text (byte 0xe9 at column 4)")


def test_a_run_with_damaged_weights_cannot_generate(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    clear_error(runner.invoke(app, ["generate", str(run), "x"]), "the weights file is damaged")


@pytest.mark.parametrize(("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_nothing_is_presented_as_complete_after_an_interrupt(tmp_path, tiny_path, stop, code):
    """Ctrl-C, and SIGTERM (what SLURM, Kubernetes and `docker stop` send), save a checkpoint of the step reached,
    release the lock and name the resume command; no final model is presented."""
    path = train_recipe(tmp_path, tiny_path, 400)
    process = start(path)
    run = tmp_path / "run"
    wait_for(lambda: (run / "metrics.jsonl").exists() and max(logged_steps(run), default=0) >= 3)
    process.send_signal(stop)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code and "--resume" in err and "Traceback" not in err, err
    assert not (run / "model.safetensors").exists() and not (run / ".lock").exists()
    step = max(logged_steps(run))
    assert (run / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").exists()  # the steps since are kept
    assert json.loads((run / "run.json").read_text())["stop_reason"] == "interrupted"


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c-to-the-group", "sigterm-to-sft"])
def test_an_interrupt_under_two_processes_stops_every_rank_at_one_checkpoint(tmp_path, tiny_path, stop):
    """Two LoRA ranks over gloo: Ctrl-C from a terminal reaches the whole process group, SIGTERM from a scheduler
    reaches sft alone; either way both ranks stop at the same step with one checkpoint (each rank's RNG state in
    it), exit 130/143 without a traceback from sft or its launcher, and name the resume command. DDP runs without
    torch's unused-parameters pass (no warning)."""
    path = train_recipe(tmp_path, tiny_path, 400, save_steps=1000)
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "lora": {"r": 4}}))
    process = subprocess.Popen(
        [*SFT, "train", str(path), "--num-processes", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,  # its own process group, as a terminal gives a command
    )
    run = tmp_path / "run"
    wait_for(lambda: (run / "metrics.jsonl").exists() and max(logged_steps(run), default=0) >= 3, seconds=240)
    if stop == signal.SIGINT:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=180)
    code = 128 + stop
    assert process.returncode == code, err[-3000:]
    assert "Traceback" not in err and "--resume" in err and "--num-processes 2" in err, err[-3000:]
    assert "did not find any unused parameters" not in err
    [checkpoint] = (run / "checkpoints").glob("checkpoint-*")
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert int(checkpoint.name.split("-")[1]) >= 3 and (checkpoint / "trainer_state.json").exists()
    assert json.loads((run / "run.json").read_text())["stop_reason"] == "interrupted"
    assert not (run / ".lock").exists()
