"""Prepared datasets at scale: `sft prepare` (encode into the cached Arrow dataset), a second cached run, the time
to `sft preview`'s first example, and TRL's own SFTTrainer preprocessing of the same rows as prompt/completion,
in one run. Rows are generated alpaca rows with long-tailed lengths.

Each phase runs in its own process; peak memory is the summed RSS of that process and its children (sft's
encoding workers), sampled every 0.1 s: an upper bound, since pages forked workers share with the main process count
once per process.

Usage: python scripts/bench_prepare.py [--rows 1000000] [--model fixtures/smollm2-135m] [--dir DIR] [--skip-trl]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYLLABLES = "ka lo mi ne ru sa to vi ze pa do fe gu hi ja ko lu ma ni po qua re si tu va we xo yu".split()
TASKS = [
    "Summarise the text.",
    "Translate into French.",
    "Answer the question.",
    "Rewrite it formally.",
    "List the key points.",
    "Explain it to a child.",
    "Classify the sentiment.",
    "Write a short reply.",
]


def words(rng: random.Random, mean: float, sigma: float, low: int, high: int) -> str:
    """A run of pseudo-words whose count is log-normal: most rows short, a long tail of long ones."""
    n = int(min(high, max(low, rng.lognormvariate(math.log(mean), sigma))))
    return " ".join("".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(n))


def generate(n: int, folder: Path) -> tuple[Path, Path]:
    """alpaca rows, and the same rows as TRL's prompt/completion (the alpaca template applied), streamed to disk."""
    from sft_cli.encoding.templates import render_prompt

    class Eos:
        eos_token = "<|im_end|>"
        chat_template = None

    rng = random.Random(0)
    alpaca, pairs = folder / "alpaca.jsonl", folder / "prompt_completion.jsonl"
    with alpaca.open("w", encoding="utf-8") as a, pairs.open("w", encoding="utf-8") as p:
        for _ in range(n):
            row = {
                "instruction": f"{rng.choice(TASKS)} {words(rng, 8, 0.8, 1, 200)}",
                "input": words(rng, 25, 1.0, 1, 500) if rng.random() < 0.4 else "",
                "output": words(rng, 30, 1.0, 3, 350),
            }
            a.write(json.dumps(row) + "\n")
            prompt = render_prompt("alpaca", row, Eos()).text
            p.write(json.dumps({"prompt": prompt, "completion": row["output"] + Eos.eos_token}) + "\n")
    return alpaca, pairs


def measure(argv: list[str], env: dict | None = None, marker: str | None = None) -> dict:
    """Run a command; wall time, peak summed RSS of its process tree, and when `marker` first appeared."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )
    seen: dict = {}
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if marker and marker in line and "marker" not in seen:
                seen["marker"] = time.perf_counter() - start

    reader = threading.Thread(target=read)
    reader.start()
    peak, root = 0, psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    reader.join()
    if process.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{''.join(lines[-30:])}")
    return {
        "seconds": time.perf_counter() - start,
        "peak_mb": peak / 2**20,
        "marker": seen.get("marker"),
        "output": "".join(lines),
    }


def trl_phase(pairs: Path, model: Path) -> None:
    """TRL's preprocessing of prompt/completion rows: load the JSON lines into Arrow, tokenize, build masks."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model)
    tiny = AutoModelForCausalLM.from_pretrained(ROOT / "fixtures" / "tiny-llama", dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = datasets.load_dataset("json", data_files=str(pairs), split="train", cache_dir=tmp)
        args = SFTConfig(output_dir=tmp, max_length=1024, report_to="none", use_cpu=True, bf16=False)
        trainer = SFTTrainer(model=tiny, args=args, train_dataset=dataset.select(range(8)), processing_class=tokenizer)
        prepared = trainer._prepare_dataset(dataset, tokenizer, args, False, None, "bench")
        print(f"trl rows {len(prepared)}")


def first_example_phase(recipe: Path) -> None:
    """Seconds from a loaded tokenizer to preview's first example (what `sft preview` prints first)."""
    from sft_cli.encoding.loading import load_tokenizer
    from sft_cli.encoding.preview import first_examples
    from sft_cli.recipe.schema import load_recipe

    loaded = load_recipe(recipe).recipe
    tokenizer = load_tokenizer(loaded)
    start = time.perf_counter()
    first_examples(loaded, tokenizer, limit=3)
    print(f"first examples after tokenizer {time.perf_counter() - start:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--model", type=Path, default=ROOT / "fixtures" / "smollm2-135m")
    parser.add_argument("--dir", type=Path, help="keep the generated data and cache here")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--phase", choices=["trl", "first"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "trl":
        return trl_phase(args.data, args.model)
    if args.phase == "first":
        return first_example_phase(args.data)

    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    alpaca, pairs = generate(args.rows, folder)
    size_mb = alpaca.stat().st_size / 2**20
    print(f"generated {args.rows:,} rows in {time.perf_counter() - started:.0f} s ({size_mb:.0f} MB)")
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        f"model: {{name: {args.model.resolve()}}}\ndata: {{path: {alpaca}}}\ntemplate: alpaca\nmax_length: 1024\n",
        encoding="utf-8",
    )
    cache = {"SFT_CACHE_DIR": str(folder / "cache")}
    sft = [sys.executable, "-m", "sft_cli"]
    cold = measure([*sft, "prepare", str(recipe)], cache)
    warm = measure([*sft, "prepare", str(recipe)], cache)
    preview = measure([*sft, "preview", str(recipe), "-n", "1"], cache, marker="row 1 ")
    first = measure([sys.executable, __file__, "--phase", "first", "--data", str(recipe)], cache)
    workers = len(os.sched_getaffinity(0))
    print(cold["output"][-1400:])
    print(f"\n{args.rows:,} rows, tokenizer {args.model.name}, {workers} cores")
    rate = args.rows / cold["seconds"]
    print(
        f"  sft prepare (cold, {workers} workers)   {cold['seconds']:7.1f} s  {rate:8.0f} rows/s  "
        f"{rate / workers:7.0f} rows/s/core  peak {cold['peak_mb']:6.0f} MB"
    )
    print(f"  sft prepare (cached)              {warm['seconds']:7.1f} s  peak {warm['peak_mb']:6.0f} MB")
    print(
        f"  sft preview: first example at     {preview['marker']:7.1f} s from the command's start "
        f"(whole preview {preview['seconds']:.1f} s)"
    )
    print(f"  {first['output'].strip().splitlines()[-1]}")
    if not args.skip_trl:
        trl = measure([sys.executable, __file__, "--phase", "trl", "--data", str(pairs), "--model", str(args.model)])
        print(
            f"  TRL SFTTrainer preprocessing      {trl['seconds']:7.1f} s  {args.rows / trl['seconds']:8.0f} rows/s  "
            f"{args.rows / trl['seconds']:7.0f} rows/s/core  peak {trl['peak_mb']:6.0f} MB  (1 process)"
        )
        print(
            f"  sft vs TRL, per core: {trl['seconds'] / cold['seconds'] / workers:.2f}x; "
            f"wall: {trl['seconds'] / cold['seconds']:.2f}x"
        )


if __name__ == "__main__":
    main()
