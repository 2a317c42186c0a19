"""Experiment trackers: a real run logs to TensorBoard and MLflow, read back with their own readers; a tracker that
cannot run is a `sft validate` error before any model loads."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from recipes import SIZES, mixed_recipe, sources, write_sources
from typer.testing import CliRunner

from sft_cli.cli.app import app
from sft_cli.recipe.schema import load_recipe
from sft_cli.training.run import train
from sft_cli.training.trackers import _wandb_logged_in, metric_names

runner = CliRunner()


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return uri


def test_a_run_logs_every_step_and_each_sources_eval_to_tensorboard_and_mlflow(tmp_path, tiny_smollm, mlflow_store):
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = write_sources(tmp_path, {"alpaca": 60, "qa": 40, "dialogues": 30})
    training = {"eval_steps": 3, "report_to": ["tensorboard", "mlflow"], "tracker_project": "mix-test"}
    path = mixed_recipe(tmp_path, tiny_smollm, sources(files), training=training, eval_fraction=0.2)
    run_dir = train(load_recipe(path)).run_dir
    steps = list(range(1, 7))

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]

    def tb(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert [step for step, _ in tb("train/loss")] == steps
    for tag in ("train/learning_rate", "train/grad_norm", "train/tokens_per_s", "train/trained_tokens_per_step"):
        assert tag in scalars, (tag, scalars)
    assert [step for step, _ in tb("eval/loss")] == [3, 6]
    for label in SIZES:
        assert [step for step, _ in tb(f"eval/{label}/loss")] == [3, 6]
    assert "recipe" in " ".join(events.Tags()["tensors"])  # the recipe as text
    written = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [value for _, value in tb("train/loss")] == pytest.approx([r["loss"] for r in written if "loss" in r])

    client = mlflow.MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name("mix-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train.loss")] == steps
    for label in SIZES:
        assert [m.step for m in client.get_metric_history(run.info.run_id, f"eval.{label}.loss")] == [3, 6]
    assert run.data.params["recipe.template"] == "chat" and run.data.params["recipe.training.eval_steps"] == "3"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"recipe.json", "plan.json", "run.json"} <= artifacts
    facts = json.loads((run_dir / "run.json").read_text())
    assert json.loads((run_dir / "trackers.json").read_text()) == {"project": "mix-test", "mlflow": run.info.run_id}
    assert facts["eval"]["eval_qa_loss"] == pytest.approx(
        client.get_metric_history(run.info.run_id, "eval.qa.loss")[-1].value
    )


def test_a_resumed_run_and_its_harness_scores_continue_its_mlflow_run(tmp_path, tiny_path, mlflow_store):
    import mlflow
    from recipes import choice_task, recipe_file

    path = recipe_file(tmp_path, tiny_path, training={"report_to": "mlflow", "max_steps": 6, "save_steps": 3})
    first = runner.invoke(app, ["train", str(path), "--set", "training.max_steps=3"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["train", str(path), "--resume"])
    assert again.exit_code == 0, again.output
    client = mlflow.MlflowClient(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name("recipe").experiment_id])  # the recipe's name
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train.loss")] == [1, 2, 3, 4, 5, 6]

    # lm-evaluation-harness scores after training go into the same MLflow run, at its last step
    scored = runner.invoke(app, ["eval", str(tmp_path / "run"), "--tasks", str(choice_task(tmp_path)), "--json"])
    assert scored.exit_code == 0, scored.output
    (acc,) = [s for s in json.loads(scored.stdout)["harness"]["scores"] if s["metric"] == "acc"]
    (run,) = client.search_runs([client.get_experiment_by_name("recipe").experiment_id])
    history = client.get_metric_history(run.info.run_id, "harness.choice.acc")
    assert [(m.step, m.value) for m in history] == [(6, pytest.approx(acc["tuned"]))]
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("tracker, module", [("mlflow", "mlflow"), ("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_tracker_that_is_not_installed_fails_validate(make_recipe, tiny_path, monkeypatch, tracker, module):
    monkeypatch.setitem(sys.modules, module, None)  # as Python sees an uninstalled package: import fails
    result = runner.invoke(app, ["validate", str(make_recipe(tiny_path)), "--set", f"training.report_to=[{tracker}]"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{tracker} is not installed" in result.output and f"pip install 'sft-cli[{tracker}]'" in result.output


def test_train_refuses_a_missing_tracker_before_loading_anything(make_recipe, tiny_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = runner.invoke(app, ["train", str(make_recipe(tiny_path)), "--set", "training.report_to=mlflow"])
    assert result.exit_code == 2 and "mlflow is not installed" in result.output
    assert "run folder" not in result.output


def test_wandb_needs_a_login_or_offline_mode(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.com login a password b\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert not _wandb_logged_in()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert _wandb_logged_in()
    monkeypatch.delenv("WANDB_MODE")
    netrc.write_text("machine api.wandb.ai login user password key\n")
    assert _wandb_logged_in()


def test_report_to_reads_one_name_none_or_a_list(make_recipe, tiny_path):
    def report_to(value):
        return load_recipe(make_recipe(tiny_path), [f"training.report_to={value}"]).recipe.training.report_to

    assert report_to("none") == [] and report_to("tensorboard") == ["tensorboard"]
    assert report_to("[mlflow, tensorboard]") == ["mlflow", "tensorboard"]
    result = runner.invoke(app, ["validate", str(make_recipe(tiny_path)), "--set", "training.report_to=[comet]"])
    assert result.exit_code == 2 and "tensorboard" in result.output


def test_metric_names_group_train_and_eval():
    record = {"step": 3, "epoch": 0.5, "loss": 1.0, "eval_loss": 2.0, "eval_qa_loss": 3.0, "eval_runtime": 0.1}
    assert metric_names(record) == {
        "train/epoch": 0.5, "train/loss": 1.0, "eval/loss": 2.0, "eval/qa/loss": 3.0, "eval/runtime": 0.1,
    }  # fmt: skip


def test_validate_names_the_tracker_keys_in_the_starter_recipe(tmp_path):
    """`sft init` documents every key: the tracker keys too."""
    result = runner.invoke(app, ["init", "--output", str(tmp_path / "r.yaml")])
    assert result.exit_code == 0
    text = (tmp_path / "r.yaml").read_text()
    assert "report_to" in text and "tracker_project" in text and "sources" in text
    assert yaml.safe_load(text)


def test_scores_after_training_reach_each_trackers_own_run_and_keep_every_id(tmp_path, monkeypatch):
    """Two trackers that keep run ids, reopened one at a time after training: each continues its own run, twice,
    and trackers.json keeps both ids (a resumed `sft train` reads the same file)."""
    from sft_cli.training import trackers

    opened = []

    class Kept:
        def __init__(self, name):
            self.name = name

        def __call__(self, owner, recipe, plan, run_id):
            tracker = type("Open", (), {})()
            tracker.run_id = run_id or f"{self.name}-new"
            tracker.log = lambda metrics, step: opened.append((self.name, run_id, step, dict(metrics)))
            tracker.finish = lambda facts, failed: None
            return tracker

    monkeypatch.setitem(trackers.STARTERS, "mlflow", Kept("mlflow"))
    monkeypatch.setitem(trackers.STARTERS, "wandb", Kept("wandb"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump({"training": {"report_to": ["mlflow", "wandb"]}}))
    (run_dir / "run.json").write_text(json.dumps({"global_step": 12, "plan": {}}))
    ids = {"project": "p", "mlflow": "m-1", "wandb": "w-1"}
    (run_dir / "trackers.json").write_text(json.dumps(ids))
    for _ in range(2):
        assert trackers.report_after_training(run_dir, {"harness/t/acc": 0.5}) == []
    assert [(name, run_id, step) for name, run_id, step, _ in opened] == [
        ("mlflow", "m-1", 12), ("wandb", "w-1", 12), ("mlflow", "m-1", 12), ("wandb", "w-1", 12)
    ]  # fmt: skip
    assert json.loads((run_dir / "trackers.json").read_text()) == ids
