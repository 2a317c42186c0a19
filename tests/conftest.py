"""Shared fixtures: the two local models (built by scripts/build_fixtures.py) and recipe files on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("SFT_FIXTURES", ROOT / "fixtures"))
TINY = FIXTURES / "tiny-llama"
SMOLLM2 = FIXTURES / "smollm2-135m"
MODELS = {"tiny": TINY, "smollm2": SMOLLM2}


def _require(path: Path) -> Path:
    if not (path / "config.json").exists():
        pytest.fail(f"{path} is missing: run `python scripts/build_fixtures.py` first", pytrace=False)
    return path


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Prepared datasets go to a folder of this test session, not the user's cache (subprocesses inherit it)."""
    folder = tmp_path_factory.mktemp("sft-cache")
    previous = os.environ.get("SFT_CACHE_DIR")
    os.environ["SFT_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SFT_CACHE_DIR", None)
    else:
        os.environ["SFT_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    return _require(TINY)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _require(SMOLLM2)


@pytest.fixture(scope="session")
def tiny_smollm() -> Path:
    """A tiny random model with SmolLM2's tokenizer and ChatML chat template."""
    return _require(FIXTURES / "tiny-smollm")


@pytest.fixture(params=sorted(MODELS))
def model_path(request) -> Path:
    """Each test that takes this runs on both tokenizers: the tiny one (adds BOS, pad != EOS) and SmolLM2."""
    return _require(MODELS[request.param])


ALPACA_ROWS = [
    {"instruction": "Translate to French.", "input": "Good morning!", "output": "Bonjour !"},
    {"instruction": "Name the largest ocean.", "input": "", "output": "The Pacific Ocean."},
    {"instruction": "Reverse the word.", "output": "desserts", "input": "stressed"},
    {"instruction": "Add the numbers.", "input": "12 and 30", "output": "42"},
]
CHAT_ROWS = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of Japan?"},
            {"role": "assistant", "content": "Tokyo."},
            {"role": "user", "content": "And France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    },
    {"messages": [{"role": "user", "content": "Opposite of hot?"}, {"role": "assistant", "content": "Cold."}]},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def make_recipe(tmp_path):
    """Write a recipe (and its data) into tmp_path; returns the recipe's path."""

    def make(model: Path, rows: list[dict] | None = None, **fields) -> Path:
        data = write_jsonl(tmp_path / "train.jsonl", rows if rows is not None else ALPACA_ROWS)
        recipe = {"model": {"name": str(model)}, "data": {"path": data.name}, **fields}
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        return path

    return make
