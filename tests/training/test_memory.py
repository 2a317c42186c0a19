"""The memory forecast: within 20% of the measured peak on real runs, the same from `sft validate --memory` (no
weights) as from a loaded model, and a warning with the cheapest fixes when it would not fit."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import ROOT
from recipes import recipe_file
from typer.testing import CliRunner

import sft_cli.training.memory as memory
from sft_cli.cli.app import app
from sft_cli.device import Hardware
from sft_cli.encoding.loading import load_model, load_model_skeleton
from sft_cli.recipe.schema import load_recipe
from sft_cli.training.environment import Launch, ModelFacts, decide
from sft_cli.training.memory import MB, forecast, longest_batch, model_shape
from sft_cli.training.run import train

runner = CliRunner()
MEASURED = "CUDA allocated" if torch.cuda.is_available() else "peak RSS"  # what run.json's peak is, per device


def check_script():
    spec = importlib.util.spec_from_file_location("check_memory_forecast", ROOT / "scripts/check_memory_forecast.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_forecast_is_within_20_percent_of_the_measured_peak(smollm2_path):
    """Six real 2-step runs of SmolLM2-135M (full and LoRA, two batch sizes, two max_lengths, chunked loss on and
    off), each in its own process; rows of one length, so every batch is the forecast's longest batch."""
    script = check_script()
    results = script.check(script.QUICK, smollm2_path)
    assert len(results) == 6
    for result in results:
        assert result["measured"] == MEASURED
        assert 0.8 <= result["ratio"] <= 1.2, result


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU peak (peak RSS) only")
def test_the_measured_peak_is_the_runs_own_when_a_large_process_starts_it():
    """A run started by a large process (a test session, a notebook) reports its own peak, not the parent's size:
    getrusage's peak survives exec, so it would say 1.5 GB here."""
    import subprocess
    import sys

    parent = bytearray(1500 * MB)
    parent[::4096] = b"\x01" * len(parent[::4096])  # every page touched: resident
    code = "from sft_cli.training.memory import measured_peak; print(measured_peak()['measured_peak_mb'])"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(child.stdout) < 1000, child.stdout
    del parent


def test_the_longest_batch_is_the_one_the_sampler_can_draw():
    lengths = [5, 40, 7, 33, 12, 40]
    assert longest_batch(lengths, 2, "padding_free", 64) == (80, 2)
    assert longest_batch(lengths, 3, "padded", 64) == (120, 3)
    assert longest_batch(lengths, 2, "packed", 64) == (128, 2)
    assert longest_batch([9], 4, "padding_free", 64) == (9, 1)


def test_validate_forecasts_from_the_architecture_alone_what_a_loaded_model_gives(tmp_path, tiny_path):
    recipe = load_recipe(recipe_file(tmp_path, tiny_path, lora={"r": 4})).recipe
    skeleton = model_shape(load_model_skeleton(recipe.model), 0.0)
    loaded = model_shape(load_model(recipe.model, dtype=None), 0.0)
    assert skeleton.total_parameters == loaded.total_parameters
    assert skeleton == loaded

    done = runner.invoke(app, ["validate", str(tmp_path / "recipe.yaml"), "--memory"])
    assert done.exit_code == 0, done.output
    line = next(line for line in done.output.splitlines() if line.startswith("memory forecast:"))
    for part in ("MB per process of", "at the longest batch", "runtime"):  # the tiny model's other parts round to 0 MB
        assert part in line


def test_a_run_records_its_forecast_and_measured_peak(tmp_path, tiny_path):
    result = train(load_recipe(recipe_file(tmp_path, tiny_path, training={"max_steps": 2})))
    facts = json.loads((result.run_dir / "run.json").read_text())
    assert facts["memory"]["forecast_mb"] == facts["plan"]["memory"]["forecast_mb"] > 0
    assert facts["memory"]["measured_peak_mb"] > 0
    assert facts["memory"]["measured"] == MEASURED
    assert facts["plan"]["memory"]["parts_mb"]["runtime"] > 0


def test_a_forecast_that_does_not_fit_names_the_cheapest_fixes(tmp_path, tiny_path, monkeypatch):
    recipe = load_recipe(
        recipe_file(tmp_path, tiny_path, max_length=512, training={"batch_size": 8, "chunked_loss": False})
    ).recipe
    shape = model_shape(load_model_skeleton(recipe.model), 0.0)
    lengths = [500] * 16 + [20] * 200
    env = decide(recipe, Hardware(), Launch(), ModelFacts())
    roomy = forecast(recipe, shape, lengths, 0.5, "padding_free", 0, env)
    assert not roomy.too_big and roomy.fixes == [] and memory.memory_warning(roomy) is None

    monkeypatch.setattr(memory, "device_memory_bytes", lambda runtime: int(roomy.total / 0.95))
    tight = forecast(recipe, shape, lengths, 0.5, "padding_free", 0, env)
    assert tight.too_big
    changes = [change for change, _ in tight.fixes]
    assert (
        changes
        == [
            "training.chunked_loss: true",
            "training.batch_size: 4, gradient_accumulation_steps: 2",
            "training.gradient_checkpointing: true",
            "lora: {r: 16}",
            "max_length: 500 (99% of the examples fit)",
        ][: len(changes)]
    )
    assert len(changes) == 4  # 99% of these lengths need max_length 500: no cheaper max_length to offer
    assert all(size < tight.total for _, size in tight.fixes)
    warning = memory.memory_warning(tight)
    assert "95%" in warning and "training.chunked_loss: true" in warning
    assert tight.as_dict()["forecast_mb"] == round(tight.total / MB)


def test_a_cpu_run_keeps_freed_memory_for_the_next_step_and_gives_it_back_above_the_forecast():
    import resource

    import torch

    def faults_of_ten_steps() -> int:  # large buffers every "step", as a step's logits and gradients are
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            buffers = [torch.ones(10 << 20) for _ in range(2)]  # 2 x 40 MB: above glibc's largest mmap threshold
            del buffers
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    fresh = faults_of_ten_steps()  # glibc's defaults: large buffers are mmap'd, faulted in and unmapped again
    heap = memory.CpuHeap.start(limit_bytes=memory.resident_bytes() + 2**30)
    assert heap is not None  # glibc on Linux
    try:
        kept = faults_of_ten_steps()
        held = memory.resident_bytes()
        heap.after_step()
        assert heap.trims == 0 and memory.resident_bytes() >= held - 2**20  # below the limit: kept for the next step
        heap.limit = 0
        heap.after_step()
        assert heap.trims == 1 and memory.resident_bytes() < held - 60 * 2**20  # above it: given back
    finally:
        heap.stop()
    assert kept < fresh / 4, (kept, fresh)
