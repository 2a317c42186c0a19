"""The memory forecast against the measured peak: `sft train` on SmolLM2-135M-Instruct (the local fixture) for 2
steps per configuration, each in its own process, rows all of one length so that every batch is the longest
batch the forecast assumes. run.json holds the forecast and the measured peak (peak RSS on CPU, CUDA's
max_memory_allocated on a GPU).

    python scripts/check_memory_forecast.py [--quick] [--model fixtures/smollm2-135m]

Prints one row per configuration: forecast, measured, forecast / measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (name, LoRA, batch size, max_length, chunked loss)
CONFIGS = [
    ("full b4 L256 chunked", False, 4, 256, True),
    ("full b8 L256 chunked", False, 8, 256, True),
    ("full b4 L512 full-logits", False, 4, 512, False),
    ("full b8 L512 chunked", False, 8, 512, True),
    ("LoRA b4 L256 full-logits", True, 4, 256, False),
    ("LoRA b8 L512 chunked", True, 8, 512, True),
]
QUICK = [  # the test's set: the same axes at a quarter of the tokens
    ("full b2 L128 chunked", False, 2, 128, True),
    ("full b4 L128 chunked", False, 4, 128, True),
    ("full b2 L256 full-logits", False, 2, 256, False),
    ("full b4 L256 chunked", False, 4, 256, True),
    ("LoRA b2 L128 full-logits", True, 2, 128, False),
    ("LoRA b4 L256 chunked", True, 4, 256, True),
]
PROMPT = {"instruction": "Repeat the letter.", "input": ""}


def sft(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sft_cli", *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"sft {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def rows_of_length(folder: Path, model: str, length: int, count: int) -> Path:
    """`count` identical rows whose encoding is exactly `length` tokens (the answer repeats one token)."""
    probe = folder / "probe.jsonl"
    probe.write_text(json.dumps({**PROMPT, "output": "a"}) + "\n")
    recipe = write_recipe(folder, model, probe, False, 1, 4096, True, folder / "unused")
    tokens = json.loads(sft("preview", str(recipe), "--json", "--no-cache"))["stats"]["total_tokens"]
    answer = " ".join(["a"] * (length - tokens + 1))
    path = folder / f"rows-{length}.jsonl"
    path.write_text((json.dumps({**PROMPT, "output": answer}) + "\n") * count)
    return path


def write_recipe(folder, model, data, lora, batch, max_length, chunked, out) -> Path:
    recipe = {
        "model": {"name": str(model)},
        "data": {"path": str(data)},
        "template": "alpaca",
        "loss": "masked",
        "max_length": max_length,
        "training": {"batch_size": batch, "max_steps": 2, "chunked_loss": chunked, "logging_steps": 1},
        "output": {"dir": str(out)},
    }
    if lora:
        recipe["lora"] = {"r": 16}
    path = folder / f"recipe-{abs(hash((lora, batch, max_length, chunked)))}.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def check(configs, model: Path) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = {length: rows_of_length(folder, model, length, 32) for length in {c[3] for c in configs}}
        for name, lora, batch, max_length, chunked in configs:
            out = folder / name.replace(" ", "-")
            recipe = write_recipe(folder, model, data[max_length], lora, batch, max_length, chunked, out)
            sft("train", str(recipe), "--no-cache")
            memory = json.loads((out / "run.json").read_text())["memory"]
            ratio = memory["forecast_mb"] / memory["measured_peak_mb"]
            results.append({"config": name, **memory, "ratio": round(ratio, 3)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the test's smaller configurations")
    parser.add_argument("--model", type=Path, default=ROOT / "fixtures" / "smollm2-135m")
    args = parser.parse_args()
    results = check(QUICK if args.quick else CONFIGS, args.model)
    print(f"| configuration | forecast MB | measured MB ({results[0]['measured']}) | forecast / measured |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['forecast_mb']:,} | {r['measured_peak_mb']:,} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
