"""Several data sources mixed by weight: three formats under one chat template, shares exact over 1,300 rows, the mix
decided by the seed, each source's cache kept when a weight changes, per-source evaluation in a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from recipes import SIZES, mixed_recipe, sources, write_sources
from typer.testing import CliRunner

from sft_cli.cli.app import app
from sft_cli.encoding.loading import load_tokenizer
from sft_cli.encoding.mixing import prepare_mix, shares_of
from sft_cli.recipe.schema import load_recipe
from sft_cli.training.run import train

runner = CliRunner()


def mix_of(path: Path, *overrides: str):
    recipe = load_recipe(path, list(overrides)).recipe
    return prepare_mix(recipe, load_tokenizer(recipe), ("train",))


def test_three_formats_mix_by_weight_with_exact_shares(tmp_path, tiny_smollm):
    files = write_sources(tmp_path)
    mix = mix_of(mixed_recipe(tmp_path, tiny_smollm, sources(files)))
    shares = {s["label"]: s for s in mix.shares()}
    assert [s["examples"] for s in shares.values()] == [600, 400, 300]  # every row of every format encoded
    assert mix.examples == 1300 and len(mix.train_dataset()) == 1300
    for label, weight in zip(SIZES, (0.5, 0.3, 0.2)):
        assert abs(shares[label]["share"] - weight) <= 0.02, shares[label]
    # 650 asked of 600 alpaca examples: each once, 50 twice (none three times), and a warning says so
    assert shares["alpaca"]["taken"] == 650 and shares["alpaca"]["repeats"] == 50
    assert [w for w in mix.warnings() if "alpaca" in w] and not [w for w in mix.warnings() if "qa" in w]
    # the mixed set holds exactly the drawn examples of each source, in order
    part = mix.parts[1]
    train = mix.train_dataset()
    source_rows = part.prepared["train"].dataset()
    start = len(mix.parts[0].taken)
    for offset in (0, 17, len(part.taken) - 1):
        assert train[start + offset]["input_ids"] == source_rows[part.taken[offset]]["input_ids"]
    assert part.tokens == sum(len(source_rows[i]["input_ids"]) for i in part.taken)


def test_the_seed_decides_the_mix_and_a_weight_change_reencodes_nothing(tmp_path, tiny_smollm):
    files = write_sources(tmp_path)
    path = mixed_recipe(tmp_path, tiny_smollm, sources(files))
    first, again = mix_of(path), mix_of(path)
    assert [p.taken for p in first.parts] == [p.taken for p in again.parts]
    assert all(p.cached for p in again.prepared().values())
    other_seed = mix_of(path, "training.seed=7")
    assert [p.taken for p in other_seed.parts] != [p.taken for p in first.parts]
    reweighted = mix_of(path, "data.sources.0.weight=0.2", "data.sources.2.weight=0.5")
    assert all(p.cached for p in reweighted.prepared().values()), "a weight is not part of a source's encoding"
    assert {p: v.fingerprint for p, v in reweighted.prepared().items()} == {
        p: v.fingerprint for p, v in first.prepared().items()
    }
    assert [len(p.taken) for p in reweighted.parts] == [260, 390, 650]
    # a change to one source's own keys re-encodes that source only
    limited = mix_of(path, "data.sources.1.limit=100")
    assert [p.cached for p in limited.prepared().values()] == [True, False, True]


def test_without_weights_every_example_counts_once_and_max_rows_caps_a_source(tmp_path, tiny_smollm):
    files = write_sources(tmp_path)
    entries = sources(files, weights=(None, None, None))
    entries[0]["max_rows"] = 100
    mix = mix_of(mixed_recipe(tmp_path, tiny_smollm, entries))
    assert [len(p.taken) for p in mix.parts] == [100, 400, 300]
    assert len(set(mix.parts[0].taken)) == 100 and mix.parts[0].taken != list(range(100))  # a sample, not a head
    assert not mix.warnings()


def test_shares_add_up_exactly():
    assert shares_of(1300, [0.5, 0.3, 0.2]) == [650, 390, 260]
    assert shares_of(10, [1, 1, 1]) == [4, 3, 3] and sum(shares_of(7, [0.1, 0.2, 0.7])) == 7


def test_preview_shows_each_source_and_its_share(tmp_path, tiny_smollm):
    files = write_sources(tmp_path)
    path = mixed_recipe(tmp_path, tiny_smollm, sources(files))
    result = runner.invoke(app, ["preview", str(path), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [e["source"] for e in document["examples"]] == ["alpaca", "qa", "dialogues"]
    assert [s["share"] for s in document["sources"]] == [0.5, 0.3, 0.2]
    assert document["stats"]["examples"] == 1300 and document["mix_warnings"]
    shown = runner.invoke(app, ["preview", str(path)])
    assert shown.exit_code == 0 and "sources" in shown.output and "50.0%" in shown.output
    assert all(f"{label} row 1 ·" in shown.output for label in SIZES)  # the first example of each source
    one = json.loads(runner.invoke(app, ["preview", str(path), "--json", "--source", "qa", "--index", "3"]).stdout)
    assert "Spell 2 in words?" in one["examples"][0]["text"]
    unknown = runner.invoke(app, ["preview", str(path), "--source", "nope"])
    assert unknown.exit_code == 2 and "alpaca, qa, dialogues" in unknown.output


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"path": "x.jsonl", "sources": [{"path": "y.jsonl"}]}, "not both"),
        ({"sources": [{"path": "a.jsonl", "weight": 1}, {"path": "b.jsonl"}]}, "give every source a weight"),
        ({"sources": [{"path": "a/t.jsonl"}, {"path": "b/t.jsonl"}]}, "label 't' is used twice"),
        ({"sources": [{"path": "a.jsonl"}], "format": "alpaca"}, "data.format belong in each source entry"),
        ({"sources": [{"path": "a.jsonl", "wieght": 1}]}, "did you mean 'weight'"),
        ({"sources": [{"path": "a.jsonl", "weight": 0}]}, "greater than 0"),
        ({"sources": [{"path": "a.jsonl", "label": "a b"}]}, "label"),
    ],
)
def test_bad_sources_are_recipe_errors(tmp_path, tiny_path, data, needle):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": str(tiny_path)}, "data": data}))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output, result.output


def test_early_stopping_must_watch_a_source_with_eval_data(tmp_path, tiny_smollm):
    files = write_sources(tmp_path)
    entries = sources(files)
    entries[0]["eval_fraction"] = 0.1
    training = {"early_stopping": {"metric": "eval_qa_loss"}}
    path = mixed_recipe(tmp_path, tiny_smollm, entries, training=training)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "choose eval_loss, eval_alpaca_loss" in result.output, result.output


def test_a_mixed_run_evaluates_each_source_and_all_of_them(tmp_path, tiny_smollm):
    files = write_sources(tmp_path, {"alpaca": 60, "qa": 40, "dialogues": 30})
    training = {"eval_steps": 3, "save_steps": 3, "early_stopping": {"metric": "eval_qa_loss", "patience": 5}}
    path = mixed_recipe(tmp_path, tiny_smollm, sources(files), training=training, eval_fraction=0.2)
    result = train(load_recipe(path))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    for record in evals:
        per_source = [record[f"eval_{label}_loss"] for label in SIZES]
        assert min(per_source) <= record["eval_loss"] <= max(per_source)
    trained = [r for r in records if "loss" in r]
    assert all(r["trained_tokens_per_step"] > 0 for r in trained)
    facts = json.loads((result.run_dir / "run.json").read_text())
    assert set(facts["eval"]) == {"eval_loss", "eval_alpaca_loss", "eval_qa_loss", "eval_dialogues_loss"}
    assert [s["label"] for s in facts["plan"]["sources"]] == list(SIZES)
    assert facts["best_metric"] == min(r["eval_qa_loss"] for r in evals)  # the best checkpoint by the named source


def test_a_hub_datasets_configuration_and_revision_are_recipe_keys_and_in_the_cache_key(
    tmp_path, tiny_path, monkeypatch
):
    from sft_cli.encoding.cache import fingerprint
    from sft_cli.encoding.templates import render_options

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here: the revision stays as the recipe gives it

    def key(**data):
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump({"model": {"name": str(tiny_path)}, "data": {"path": "org/data", **data}}))
        recipe = load_recipe(path).recipe
        tokenizer = load_tokenizer(recipe)
        return fingerprint(recipe, "train", tokenizer, render_options(recipe, tokenizer))

    base = key(name="en", revision="v1")
    assert base == key(name="en", revision="v1")
    assert len({base, key(name="en", revision="v2"), key(name="fr", revision="v1"), key(split="test")}) == 4
