"""Masked vs unmasked loss, full fine-tuning vs LoRA, on the bundled task data: each variant is the quickstart
recipe for one epoch (105 steps), with full fine-tuning at lr 1e-4 or LoRA r=16 at lr 1e-3 (the quickstart's own
adapters), masked or unmasked loss, trained and evaluated through the `sft` command line, one after the other.

Prints held-out exact match, answer loss and training time per variant.
Usage: python scripts/compare_variants.py [--steps N] [--limit 120] [--out runs/compare]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ONE_EPOCH = ["training.epochs=1", "training.eval_steps=35"]
FULL = ["lora=null", "training.learning_rate=1e-4"]
VARIANTS = {
    "full, masked": [*ONE_EPOCH, *FULL],
    "full, unmasked": [*ONE_EPOCH, *FULL, "loss=unmasked"],
    "LoRA r=16, masked": ONE_EPOCH,
    "LoRA r=16, unmasked": [*ONE_EPOCH, "loss=unmasked"],
}


def sft(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "sft_cli", *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"sft {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="override the recipe's length (default: its own, 1 epoch)")
    parser.add_argument("--limit", type=int, default=120, help="held-out rows to score")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "compare")
    args = parser.parse_args()
    rows = []
    base = None
    for name, sets in VARIANTS.items():
        run_dir = args.out / name.replace(", ", "-").replace(" ", "").replace("=", "")
        overrides = [f"output.dir={run_dir}", *sets] + ([f"training.max_steps={args.steps}"] if args.steps else [])
        start = time.perf_counter()
        sft("train", "configs/quickstart.yaml", "--overwrite", *[x for o in overrides for x in ("--set", o)])
        seconds = time.perf_counter() - start
        scored = json.loads(
            sft(
                "eval",
                str(run_dir),
                "--data",
                "data/tasks/eval.jsonl",
                "--json",
                "--limit",
                str(args.limit),
                "--max-new-tokens",
                "24",
                *(["--base"] if not base else []),
            )
        )
        results = scored["results"]
        if not base:
            base = results[0]
        rows.append((name, results[-1], seconds))
    print(f"held-out rows: {args.limit}, steps: {args.steps or 'from the recipe'}, recipe: configs/quickstart.yaml")
    print(f"{'variant':22s} {'exact match':>11s} {'contained':>9s} {'answer loss':>11s} {'train s':>8s}")
    print(
        f"{'base (untouched)':22s} {base['exact_match']:11.1%} {base['contains']:9.1%} {base['loss']:11.3f} {'-':>8s}"
    )
    for name, result, seconds in rows:
        print(
            f"{name:22s} {result['exact_match']:11.1%} {result['contains']:9.1%} {result['loss']:11.3f} {seconds:8.0f}"
        )


if __name__ == "__main__":
    main()
