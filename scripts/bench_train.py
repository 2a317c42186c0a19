"""Training throughput: `sft train` against a plain TRL SFTTrainer script on the same rows, run one after the
other (each in its own process, for a clean peak-memory figure). Plain TRL runs twice: with TRL's defaults
(bf16 where the hardware reports support, which on this CPU is the slow path) and with fp32 set by hand.

Prints non-padding tokens/s, trained tokens, peak memory and the ratios.
Usage: python scripts/bench_train.py [--model fixtures/tiny-llama] [--steps 20] [--batch 8] [--runs sft,trl-fp32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "tasks" / "train.jsonl"


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_sft(model: str, steps: int, batch: int, out: Path) -> dict:
    import yaml

    from sft_cli.recipe import load_recipe
    from sft_cli.train import train

    recipe = {"model": {"name": model}, "data": {"path": str(DATA)}, "max_length": 256,
              "training": {"max_steps": steps, "batch_size": batch, "logging_steps": 1, "save_steps": 10_000},
              "output": {"dir": str(out / "run")}}
    path = out / "bench.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = train(load_recipe(path))
    record = json.loads((result.run_dir / "run.json").read_text())
    seconds = record["tokens_seen"] / record["tokens_per_s"]
    return {"precision": record["plan"]["precision"], "tokens": record["tokens_seen"], "seconds": seconds,
            "trained_tokens_per_example": record["plan"]["trained_tokens"] / record["plan"]["train_examples"]}


def run_trl(model: str, steps: int, batch: int, out: Path, fp32: bool) -> dict:
    """What a user writes with TRL alone: prompt/completion rows, SFTTrainer, SFTConfig defaults."""
    import datasets
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from sft_cli.templates import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    dataset = datasets.Dataset.from_dict({
        "prompt": [render_prompt("alpaca", r, tokenizer).text for r in rows],
        "completion": [r["output"] + tokenizer.eos_token for r in rows],
    })
    import torch

    precision = {"bf16": False, "fp16": False} if fp32 else {}
    if not torch.cuda.is_available():
        precision["use_cpu"] = True  # TRL's bf16 default refuses a CPU without it
    args = SFTConfig(output_dir=str(out / "trl"), max_steps=steps, per_device_train_batch_size=batch, max_length=256,
                     report_to=[], save_strategy="no", logging_steps=1, include_num_input_tokens_seen="non_padding",
                     disable_tqdm=True, **precision)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
            "tokens": trainer.state.num_input_tokens_seen, "seconds": seconds}


def worker(kind: str, model: str, steps: int, batch: int) -> None:
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "sft":
            result = run_sft(model, steps, batch, Path(tmp))
        else:
            result = run_trl(model, steps, batch, Path(tmp), fp32=kind == "trl-fp32")
    result["peak_mb"] = peak_memory_mb()
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "fixtures" / "tiny-llama"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", default="sft,trl-default,trl-fp32",
                        help="which runs, comma-separated (sft is always the reference)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.model, args.steps, args.batch)
    results = {}
    for kind in dict.fromkeys(["sft", *args.runs.split(",")]):
        done = subprocess.run([sys.executable, __file__, "--worker", kind, "--model", args.model,
                               "--steps", str(args.steps), "--batch", str(args.batch)],
                              capture_output=True, text=True, check=True)
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
        results[kind] = json.loads(line.removeprefix("RESULT "))
    base = results["sft"]["tokens"] / results["sft"]["seconds"]
    print(f"model {Path(args.model).name}, {args.steps} steps, batch {args.batch}, max_length 256")
    print(f"{'run':12s} {'precision':9s} {'tokens/s':>9s} {'tokens':>8s} {'peak MB':>8s}  sft vs this")
    for kind, r in results.items():
        rate = r["tokens"] / r["seconds"]
        print(f"{kind:12s} {r['precision']:9s} {rate:9.0f} {r['tokens']:8d} {r['peak_mb']:8.0f}  {base / rate:.2f}x")


if __name__ == "__main__":
    main()
