"""The final model of a run sharded over processes (FSDP2): gathered from every rank and written once by rank 0,
equal to a one-process run's, also when the sharded run stopped at a sharded checkpoint and a new group of
processes resumed from it. Real processes over gloo (tests/training/workers/sharded_save.py); before the gather, the
rank-0-only save blocked until the collective timed out (full fine-tuning) or failed on freed storage (LoRA)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

WORKER = Path(__file__).parent / "workers" / "sharded_save.py"
STEPS = 4


def run_worker(tiny_path: Path, out: Path, kind: str, processes: int, *options: str) -> None:
    launcher = [sys.executable]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    done = subprocess.run(
        [*launcher, str(WORKER), str(tiny_path), str(out), kind, str(STEPS), *options],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # two processes on two cores
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "weights_file"), [("full", "model.safetensors"), ("lora", "adapter_model.safetensors")]
)
def test_a_sharded_run_saves_and_resumes_to_the_same_model_as_one_process(tmp_path, tiny_path, kind, weights_file):
    run_worker(tiny_path, tmp_path / "one", kind, 1)
    run_worker(tiny_path, tmp_path / "sharded", kind, 2)
    checkpoint = tmp_path / "checkpoint"
    run_worker(tiny_path, tmp_path / "unused", kind, 2, "--stop-at", "2", str(checkpoint))
    assert not (tmp_path / "unused").exists() and len(list(checkpoint.glob("*.distcp"))) == 2  # a shard per rank
    run_worker(tiny_path, tmp_path / "resumed", kind, 2, "--resume", str(checkpoint))
    one = load_file(tmp_path / "one" / weights_file)
    for run in ("sharded", "resumed"):
        assert_equal_weights(one, load_file(tmp_path / run / weights_file), tiny_path, kind)
    saved = tmp_path / "sharded"
    assert (saved / "sft_template.json").is_file() and not list(saved.glob(".final.partial*"))


def assert_equal_weights(one: dict, sharded: dict, tiny_path: Path, kind: str) -> None:
    assert sorted(sharded) == sorted(one)
    base = load_file(tiny_path / "model.safetensors")
    moved = 0
    for name, tensor in one.items():
        assert sharded[name].shape == tensor.shape, name
        assert (sharded[name] - tensor).abs().max() <= 1e-5, name
        moved += name in base and not (tensor == base[name]).all()
    if kind == "full":
        assert moved > len(one) // 2  # the steps trained: the comparison is of trained weights
    else:
        assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in one.items())
